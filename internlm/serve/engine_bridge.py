"""Between HTTP requests and the engine: prompts as token ids, sampling options, async streams.

The engine's handles are blocking iterators fed by its batching loop. Each handle gets a small
pump thread that forwards its deltas into the event loop, so waiting for a token never blocks
the server, and a request that is abandoned (a client gone mid-stream) cancels its handles,
which frees their engine slots at the next step.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Sequence

from internlm.components.tokenizer.chat_template import stop_ids as chat_stop_ids
from internlm.inference import SamplingParams
from internlm.serve.config import ServeConfig
from internlm.serve.errors import APIError
from internlm.serve.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    stop_ids: tuple[int, ...]  # tokens that end this kind of completion


def chat_prompt(engine, request: ChatCompletionRequest) -> Prompt:
    messages = [{"role": m.role, "content": m.text()} for m in request.messages]
    if not any(m["content"].strip() for m in messages):
        raise APIError(400, "the conversation is empty: give at least one message with text", "messages", "empty_prompt")
    return Prompt(engine.render_chat(messages), tuple(chat_stop_ids(engine.tokenizer)))


def completion_prompts(engine, request: CompletionRequest) -> list[Prompt]:
    tokenizer, vocab = engine.tokenizer, engine.tokenizer.vocab_size
    eos = tuple(i for i in (tokenizer.eos_id,) if i is not None)
    prompts = []
    for index, prompt in enumerate(request.prompts()):
        param = "prompt" if len(request.prompts()) == 1 else f"prompt.{index}"
        if isinstance(prompt, str):
            if not prompt:
                raise APIError(400, "the prompt is empty: give some text to continue", param, "empty_prompt")
            ids = tokenizer.encode(prompt, bos=True)
        else:
            if not prompt:
                raise APIError(400, "the prompt is empty: give some token ids to continue", param, "empty_prompt")
            bad = [i for i in prompt if not 0 <= i < vocab]
            if bad:
                raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", param, "invalid_value")
            ids = list(prompt)
        prompts.append(Prompt(ids, eos))
    if not prompts:
        raise APIError(400, "the prompt list is empty", "prompt", "empty_prompt")
    return prompts


def check_request(engine, config: ServeConfig, request: SamplingFields, prompts: Sequence[Prompt]) -> int:
    """The number of new tokens each choice may make, or a 400 naming the limit that is crossed."""
    if request.model != model_id_of(engine, config):
        raise APIError(404, f"the model '{request.model}' does not exist: this server serves '{model_id_of(engine, config)}'",
                       "model", "model_not_found")
    if request.n > config.max_n:
        raise APIError(400, f"n={request.n} is more than this server allows ({config.max_n}, task.max_n)", "n", "invalid_value")
    context = engine.max_context
    max_prompt = min(config.max_prompt_tokens or context, context - 1)
    longest = max(len(p.ids) for p in prompts)
    if longest > max_prompt:
        raise APIError(400, f"the prompt has {longest} tokens, more than the {max_prompt} this server accepts "
                       f"(the model's context is {context} tokens): shorten it", "messages" if isinstance(request, ChatCompletionRequest) else "prompt",
                       "context_length_exceeded")
    asked = request.token_budget
    if asked is None:  # as OpenAI: as much as the context leaves, within the server's cap
        return min(config.max_tokens, context - longest)
    if asked > config.max_tokens:
        raise APIError(400, f"max_tokens={asked} is more than this server allows ({config.max_tokens}, task.max_tokens)",
                       "max_tokens", "invalid_value")
    if longest + asked > context:
        raise APIError(400, f"the prompt ({longest} tokens) plus max_tokens ({asked}) is more than the model's context "
                       f"of {context} tokens: lower max_tokens or shorten the prompt", "max_tokens", "context_length_exceeded")
    return asked


def model_id_of(engine, config: ServeConfig) -> str:
    return config.model_name or engine.model_id


def sampling_params(request: SamplingFields, prompt: Prompt, max_new_tokens: int, choice: int) -> SamplingParams:
    """The engine's options for one choice; choice i of a seeded request uses seed + i, so n
    sampled choices differ and the whole response is still reproducible."""
    return SamplingParams(
        max_new_tokens=max_new_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k,
        repetition_penalty=request.repetition_penalty,
        seed=None if request.seed is None else request.seed + choice,
        stop_ids=prompt.stop_ids,
        stop_strings=tuple(request.stop or ()),  # the validator runs only on given values
        do_sample=request.temperature > 0,
    )


_END = object()


async def merged_deltas(handles: Sequence) -> AsyncIterator[tuple[int, object]]:
    """(choice index, Delta) from all handles as they come; cancels every handle when the consumer
    stops early (client gone, error), so no engine slot is left generating for nobody."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue = asyncio.Queue()

    def put(item) -> None:
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, item)
        except RuntimeError:  # the loop has closed (server shutting down): nobody is listening
            pass

    def pump(index: int, handle) -> None:
        try:
            for delta in handle:
                put((index, delta))
        except BaseException as error:  # surfaced to the request, not lost in a thread
            put((index, error))
        finally:
            put((index, _END))

    for index, handle in enumerate(handles):
        threading.Thread(target=pump, args=(index, handle), daemon=True, name=f"serve-pump-{index}").start()
    running = len(handles)
    try:
        while running:
            index, item = await inbox.get()
            if item is _END:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for handle in handles:
            handle.cancel()  # a no-op for handles that have finished
