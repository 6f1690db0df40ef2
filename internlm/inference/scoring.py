"""The `LanguageModel` evaluators talk to, over our Transformer or a Hugging Face causal LM.

Log-likelihoods need no KV cache: one forward per batch of requests, sorted by length (longest
first, so padding is small and an out-of-memory shows up on the first batch), right-padded (a
causal model's real positions never see the padding). Continuation tokens are split as lm-eval
does: encode(context) and encode(context + continuation), the continuation is the tail.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from internlm.components.eval.protocol import GenerationRequest, Loglikelihood
from internlm.errors import ConfigError

Forward = Callable[[torch.Tensor], torch.Tensor]  # input ids [B, S] -> logits [B, S, V]


@dataclass
class TextCodec:
    """What scoring needs from a tokenizer, whichever library it comes from."""

    encode: Callable[[str], list[int]]  # without special tokens
    decode: Callable[[list[int]], str]
    bos_id: int | None  # put in front of every sequence when `add_bos`
    eos_id: int | None
    add_bos: bool
    render_chat: Callable[[Sequence[dict[str, str]]], str] | None = None  # None: the model has no chat template
    stop_ids: tuple[int, ...] = ()


class CausalLM:
    """A LanguageModel over a forward function returning logits."""

    def __init__(self, name: str, forward: Forward, codec: TextCodec, device: torch.device,
                 max_length: int, batch_tokens: int = 16384, engine_factory: Callable[[], Any] | None = None,
                 tree_forward: Any = None):
        self.name, self.forward, self.codec, self.device = name, forward, codec, device
        self.max_length, self.batch_tokens = max_length, batch_tokens
        self.tree_forward = tree_forward  # prefix_scoring.TreeForward: shared prefixes computed once
        self.share_prefixes = tree_forward is not None  # False: every request scored on its own (the reference)
        self.chunk_tokens = 4096  # nodes of one packed trie (its attention is dense over them)
        self.logit_rows = 16384  # vocabulary rows of logits one forward may return
        self.engine_factory, self._engine = engine_factory, None  # KV-cached batched decoding, when the model has it

    # ---- the protocol -------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return self.codec.render_chat is not None

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        if self.codec.render_chat is None:
            raise ConfigError(f"model {self.name} has no chat template", fix="evaluate a chat model or drop chat datasets")
        return self.codec.render_chat(messages)

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[Loglikelihood]:
        return self._score([self._split(context, continuation) for context, continuation in requests])

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[Loglikelihood]:
        """Each text in windows of max_length tokens, every token scored once."""
        pieces, owners = [], []
        for index, text in enumerate(texts):
            tokens = self._prefix() + self.codec.encode(text)
            first = 1  # the first token has no context (it is BOS when there is one)
            for start in range(first, len(tokens), self.max_length):
                window = tokens[max(0, start - 1) : start + self.max_length]
                context, target = window[:1], window[1:]
                pieces.append((context, target))
                owners.append(index)
        out = [Loglikelihood(0.0, True, 0) for _ in texts]
        for owner, scored in zip(owners, self._score(pieces)):
            total = out[owner]
            out[owner] = Loglikelihood(total.logprob + scored.logprob, total.is_greedy and scored.is_greedy, total.tokens + scored.tokens)
        return out

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        if self.engine_factory is None:
            return [self._generate_one(r) for r in requests]
        return self._generate_with_engine(requests)

    def _generate_with_engine(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Requests with the same sampling settings decode together on the engine's KV cache."""
        from internlm.inference.params import SamplingParams

        if self._engine is None:
            self._engine = self.engine_factory()
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.max_new_tokens, r.stop, r.temperature, r.top_p, r.seed), []).append(i)
        out = [""] * len(requests)
        for (max_new, stop, temperature, top_p, seed), members in groups.items():
            params = SamplingParams(max_new_tokens=max_new, temperature=temperature, top_p=top_p, seed=seed,
                                    stop_ids=self.codec.stop_ids, stop_strings=tuple(stop), do_sample=temperature > 0)
            prompts = [self._prefix() + self.codec.encode(requests[i].prompt) for i in members]
            for i, completion in zip(members, self._engine.generate(prompts, params)):
                out[i] = completion.text
        return out

    # ---- internals ----------------------------------------------------------------------------

    def _prefix(self) -> list[int]:
        codec = self.codec
        if codec.add_bos and codec.bos_id is not None:
            return [codec.bos_id]
        return []

    def _split(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids), as lm-eval-harness 0.4 splits them: trailing whitespace
        of the context joins the answer; the continuation is the tail of encode(context +
        continuation). An empty context is the start of a document: scored after the model's
        start token (BOS, else end-of-text), or from the second token when it already is one."""
        codec, prefix = self.codec, self._prefix()
        if not context:
            ids = codec.encode(continuation)
            if prefix:
                return prefix, ids
            start = codec.bos_id if codec.bos_id is not None else codec.eos_id
            if start is None or (ids and ids[0] == start):
                return ids[:1], ids[1:]
            return [start], ids
        stripped = context.rstrip()
        if stripped != context:
            context, continuation = stripped, context[len(stripped) :] + continuation
        whole = codec.encode(context + continuation)
        context_ids = codec.encode(context) if context else []
        if whole[: len(context_ids)] != context_ids:  # tokens merged across the boundary
            continuation_ids = codec.encode(continuation)
        else:
            continuation_ids = whole[len(context_ids) :]
        return prefix + context_ids, continuation_ids

    @torch.no_grad()
    def _score(self, pieces: Sequence[tuple[list[int], list[int]]]) -> list[Loglikelihood]:
        if any(not target for _, target in pieces):
            raise ConfigError("a continuation encodes to no tokens", where="evaluation prompts",
                              fix="check the dataset's answer template: it must add text after the prompt")
        wholes = [(context + target)[-(self.max_length + 1) :] for context, target in pieces]  # truncate from the left, keep the target
        rows = [(whole[:-1], whole[len(whole) - len(target) :]) for whole, (_, target) in zip(wholes, pieces)]
        if self.tree_forward is not None and self.share_prefixes:
            return self._score_shared(rows)
        return self._score_each(rows)

    def _score_each(self, rows: Sequence[tuple[list[int], list[int]]]) -> list[Loglikelihood]:
        """Every request its own padded row: the plain path (and the reference of the shared one)."""
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        results: list[Loglikelihood | None] = [None] * len(rows)
        start = 0
        while start < len(order):
            longest = len(rows[order[start]][0])
            size = max(1, self.batch_tokens // max(longest, 1))
            batch = order[start : start + size]
            start += len(batch)
            inputs = torch.zeros(len(batch), longest, dtype=torch.long)
            for row, i in enumerate(batch):
                ids = rows[i][0]
                inputs[row, : len(ids)] = torch.tensor(ids)
            logits = self.forward(inputs.to(self.device))
            for row, i in enumerate(batch):
                ids, target = rows[i]
                n = len(target)
                results[i] = _loglikelihood(logits[row, len(ids) - n : len(ids)], target)
        return results  # type: ignore[return-value]

    def _score_shared(self, rows: Sequence[tuple[list[int], list[int]]]) -> list[Loglikelihood]:
        """Shared prefixes (a question's options, a subject's few-shot preamble) computed once:
        the requests' tokens packed as tries (prefix_scoring), several tries per forward."""
        from internlm.inference.prefix_scoring import pack, tree_inputs

        chunks = pack([ids for ids, _ in rows], min(self.chunk_tokens, self.batch_tokens))
        chunks.sort(key=lambda c: -c.size)
        results: list[Loglikelihood | None] = [None] * len(rows)
        start = 0
        while start < len(chunks):
            batch, kept = [], set()
            while start < len(chunks):
                chunk = chunks[start]
                needed = {node for r, path in zip(chunk.rows, chunk.paths) for node in path[len(path) - len(rows[r][1]) :]}
                union = kept | needed
                # padded to the batch's first (largest) chunk; logits come back for the union of kept nodes
                if batch and ((len(batch) + 1) * batch[0].size > self.batch_tokens or (len(batch) + 1) * len(union) > self.logit_rows):
                    break
                batch.append(chunk)
                kept = union
                start += 1
            keep = sorted(kept)
            where = {node: k for k, node in enumerate(keep)}
            tokens, positions, mask = tree_inputs(batch, self.device)
            logits = self.tree_forward(tokens, positions, mask, torch.tensor(keep, device=self.device))
            for c, chunk in enumerate(batch):
                for r, path in zip(chunk.rows, chunk.paths):
                    target = rows[r][1]
                    nodes = torch.tensor([where[node] for node in path[len(path) - len(target) :]], device=logits.device)
                    results[r] = _loglikelihood(logits[c, nodes], target)
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def _generate_one(self, request: GenerationRequest) -> str:
        """Token by token over the full prefix (no KV cache): exact and simple; the inference
        engine's cached decoding replaces it for long generations."""
        codec = self.codec
        ids = self._prefix() + codec.encode(request.prompt)
        generator = torch.Generator().manual_seed(request.seed) if request.temperature > 0 else None
        new: list[int] = []
        text = ""
        for _ in range(request.max_new_tokens):
            context = (ids + new)[-self.max_length :]
            logits = self.forward(torch.tensor([context], device=self.device))[0, -1].float().cpu()
            token = _pick(logits, request.temperature, request.top_p, generator)
            if token in codec.stop_ids:
                break
            new.append(token)
            text = codec.decode(new)
            cut = _first_stop(text, request.stop)
            if cut is not None:
                return text[:cut]
        return text


def _loglikelihood(logits: torch.Tensor, target: list[int]) -> Loglikelihood:
    """Summed log-probability of `target` under logits [n, vocab], and whether it is the argmax."""
    picked = logits.float().log_softmax(-1)
    wanted = torch.tensor(target, device=logits.device)
    logprob = picked.gather(-1, wanted[:, None]).sum().item()
    return Loglikelihood(logprob, bool((picked.argmax(-1) == wanted).all()), len(target))


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


def _pick(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    ordered, order = torch.sort(probs, descending=True)
    keep = torch.cumsum(ordered, -1) - ordered < top_p
    ordered = ordered * keep
    return int(order[torch.multinomial(ordered / ordered.sum(), 1, generator=generator)])


# ---- our Transformer -----------------------------------------------------------------------------


def for_internlm(name: str, model: torch.nn.Module, tokenizer: Any, batch_tokens: int = 16384) -> CausalLM:
    """Our model and sentencepiece tokenizer (BOS in front, as it was trained)."""
    from internlm.components.tokenizer.chat_template import CHAT_MARKERS, render_chat, stop_ids

    has_markers = all(tokenizer.token_to_id(m) is not None for m in CHAT_MARKERS if m != "<|System|>")
    codec = TextCodec(
        encode=lambda text: tokenizer.encode(text),
        decode=tokenizer.decode,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
        add_bos=True,
        render_chat=(lambda messages: render_chat(messages, add_generation_prompt=True)) if has_markers else None,
        stop_ids=tuple(stop_ids(tokenizer)) if has_markers else tuple(i for i in (tokenizer.eos_id,) if i is not None),
    )
    device = next(model.parameters()).device
    rotary = getattr(getattr(getattr(model, "config", None), "attention", None), "rotary", None)
    max_length = int(getattr(rotary, "max_position", 2048))  # the longest sequence the model was built for

    def engine():
        from internlm.inference.engine import Engine

        return Engine(model, tokenizer, name, max_context=min(max_length, 4096), max_batch=16)

    from internlm.inference.prefix_scoring import internlm_tree_forward

    return CausalLM(name, lambda ids: model(ids), codec, device, max_length, batch_tokens, engine_factory=engine,
                    tree_forward=internlm_tree_forward(model))


# ---- Hugging Face ---------------------------------------------------------------------------------


def hf_location(source: str) -> tuple[Path, str | None]:
    """`hf:<dir>` or `hf:<dir>/<file>.gguf` -> (folder, gguf file name or None)."""
    path = Path(source.removeprefix("hf:")).expanduser()
    if path.suffix == ".gguf":
        return path.parent, path.name
    return path, None


def hf_has_chat_template(source: str) -> bool:
    """Read from the folder's files without loading the model (checked before any model loads)."""
    folder, gguf = hf_location(source)
    if gguf is not None:
        from gguf import GGUFReader  # the template is a metadata field of the file

        field = GGUFReader(folder / gguf).fields.get("tokenizer.chat_template")
        return field is not None
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text("utf-8")).get("chat_template"))


def check_hf_source(source: str) -> None:
    folder, gguf = hf_location(source)
    target = folder / gguf if gguf else folder / "config.json"
    if not target.is_file():
        raise ConfigError(f"no Hugging Face model at {source}", where="checkpoint / task.models",
                          fix="hf:<folder with config.json and weights> or hf:<folder>/<file>.gguf")


def for_hf(source: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
           batch_tokens: int = 16384) -> CausalLM:
    """A transformers AutoModelForCausalLM (and its tokenizer) from `hf:<dir>`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_hf_source(source)
    folder, gguf = hf_location(source)
    kwargs = {"gguf_file": gguf} if gguf else {}
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kwargs).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    return for_hf_model(source, model, tokenizer, batch_tokens)


def for_hf_model(name: str, model: Any, tokenizer: Any, batch_tokens: int = 16384) -> CausalLM:
    has_template = bool(getattr(tokenizer, "chat_template", None))
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    # lm-eval encodes with the tokenizer's own special tokens: BOS in front where it adds one (Llama)
    adds_bos = bos is not None and tokenizer("a")["input_ids"][:1] == [bos] != tokenizer("a", add_special_tokens=False)["input_ids"][:1]
    codec = TextCodec(
        encode=lambda text: tokenizer(text, add_special_tokens=False)["input_ids"],
        decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        bos_id=bos,
        eos_id=eos,
        add_bos=adds_bos,
        render_chat=(lambda messages: tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))
        if has_template else None,
        stop_ids=(eos,) if eos is not None else (),
    )
    max_length = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    device = next(model.parameters()).device
    from internlm.inference.prefix_scoring import hf_tree_forward

    return CausalLM(name, lambda ids: model(ids).logits, codec, device, min(max_length, 8192), batch_tokens,
                    tree_forward=hf_tree_forward(model))
