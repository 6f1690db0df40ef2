"""The seed's chat API on a loaded model: `model.chat(tokenizer, query, history=[])`.

    model, tokenizer = internlm.load("outputs/run")
    response, history = model.chat(tokenizer, "你好", history=[])
    for partial, history in model.stream_chat(tokenizer, "再说一遍", history=history):
        print(partial)

`with_chat(model)` gives the model these two methods (a mixin added to its class: the object,
its forward, state dict and isinstance checks are unchanged). Defaults are InternLM's:
max_new_tokens 1024, sampling at temperature 0.8 and top_p 0.8; temperature=0 or do_sample=False
is greedy. Replies stop at ``<eoa>`` or EOS, so a reply never runs into a next turn.
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

from torch import nn

from internlm.components.tokenizer.chat_template import encode_chat_prompt, stop_ids
from internlm.inference.engine import Engine
from internlm.sampling import SamplingParams
from internlm.runtime.saved_run import load as load_saved

History = list[tuple[str, str]]

CHAT_DEFAULTS = {"max_new_tokens": 1024, "temperature": 0.8, "top_p": 0.8, "do_sample": True}


def history_messages(query: str, history: Sequence[Sequence[str]], system: str | None = None) -> list[dict]:
    """(query, response) pairs and the new query as chat messages."""
    messages = [{"role": "system", "content": system}] if system else []
    for past_query, past_response in history:
        messages += [{"role": "user", "content": past_query}, {"role": "assistant", "content": past_response}]
    return messages + [{"role": "user", "content": query}]


class ChatMixin:
    """chat / stream_chat for a Transformer; an engine (one slot) is made on first use."""

    def chat(self, tokenizer, query: str, history: Sequence[Sequence[str]] = (), system: str | None = None,
             **gen: Any) -> tuple[str, History]:
        """(response, history + [(query, response)])."""
        response = ""
        for delta in self._chat_engine(tokenizer).stream(self._chat_prompt(tokenizer, query, history, system),
                                                         _chat_params(tokenizer, gen)):
            response += delta.text
        return response, [*map(tuple, history), (query, response)]

    def stream_chat(self, tokenizer, query: str, history: Sequence[Sequence[str]] = (), system: str | None = None,
                    **gen: Any) -> Iterator[tuple[str, History]]:
        """Yields (partial response, history + [(query, partial response)]) as text arrives."""
        past = [*map(tuple, history)]
        response = ""
        for delta in self._chat_engine(tokenizer).stream(self._chat_prompt(tokenizer, query, history, system),
                                                         _chat_params(tokenizer, gen)):
            if delta.text:
                response += delta.text
                yield response, [*past, (query, response)]
        if not response:  # an empty reply (an immediate <eoa>) still gives the caller its history
            yield response, [*past, (query, response)]

    def _chat_prompt(self, tokenizer, query, history, system) -> list[int]:
        return encode_chat_prompt(tokenizer, history_messages(query, history, system))

    def _chat_engine(self, tokenizer) -> Engine:
        engine = self.__dict__.get("_internlm_chat_engine")
        device = next(self.parameters()).device
        if engine is None or engine.tokenizer is not tokenizer or engine.device != device:
            if engine is not None:
                engine.close()
            engine = Engine(self, tokenizer, model_id=type(self).__name__, max_batch=1)
            self.__dict__["_internlm_chat_engine"] = engine  # a plain attribute, not a submodule
        return engine


def _chat_params(tokenizer, gen: dict[str, Any]) -> SamplingParams:
    values = {**CHAT_DEFAULTS, **gen}
    values["stop_ids"] = tuple(dict.fromkeys([*stop_ids(tokenizer), *values.get("stop_ids", ())]))
    return SamplingParams.from_dict(values, where="chat")


_CHAT_CLASSES: dict[type, type] = {}


def with_chat(model: nn.Module) -> nn.Module:
    """The same model object, its class extended with ChatMixin."""
    base = type(model)
    if issubclass(base, ChatMixin):
        return model
    if base not in _CHAT_CLASSES:
        _CHAT_CLASSES[base] = type(base.__name__, (base, ChatMixin), {"__module__": base.__module__})
    model.__class__ = _CHAT_CLASSES[base]
    return model


def load(path, device="cpu") -> tuple[nn.Module, Any]:
    """`internlm.load`: (model with chat / stream_chat, tokenizer) from a run or checkpoint folder."""
    model, tokenizer = load_saved(path, device=device)
    return with_chat(model), tokenizer
