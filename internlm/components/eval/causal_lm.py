"""The `LanguageModel` evaluators talk to, over any forward function returning logits (our
Transformer, a Hugging Face causal LM: the adapters are in `internlm.inference.scoring`).

Log-likelihoods need no KV cache: one forward per batch of requests, sorted by length (longest
first, so padding is small and an out-of-memory shows up on the first batch), right-padded (a
causal model's real positions never see the padding). Continuation tokens are split as lm-eval
does: encode(context) and encode(context + continuation), the continuation is the tail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from internlm.components.eval.protocol import GenerationRequest, Loglikelihood
from internlm.errors import ConfigError
from internlm.sampling import SamplingParams, uncached_tokens

Forward = Callable[[torch.Tensor], torch.Tensor]  # input ids [B, S] -> logits [B, S, V]
# (prompts' token ids, their shared sampling settings, stop ids) -> completions, decoded together
EngineGenerate = Callable[[list[list[int]], GenerationRequest, tuple[int, ...]], list[str]]


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
    encode_many: Callable[[list[str]], list[list[int]]] | None = None  # many texts at once (a fast tokenizer's threads)

    def encode_all(self, texts: Sequence[str]) -> dict[str, list[int]]:
        """Each distinct text encoded once."""
        unique = list(dict.fromkeys(texts))
        encoded = self.encode_many(unique) if self.encode_many is not None and unique else [self.encode(t) for t in unique]
        return dict(zip(unique, encoded))


class CausalLM:
    """A LanguageModel over a forward function returning logits."""

    def __init__(self, name: str, forward: Forward, codec: TextCodec, device: torch.device,
                 max_length: int, batch_tokens: int = 16384, engine_generate: EngineGenerate | None = None,
                 tree_forward: Any = None):
        self.name, self.forward, self.codec, self.device = name, forward, codec, device
        self.max_length, self.batch_tokens = max_length, batch_tokens
        self.tree_forward = tree_forward  # prefix_trie.TreeForward: shared prefixes computed once
        self.share_prefixes = tree_forward is not None  # False: every request scored on its own (the reference)
        self.chunk_tokens = 4096  # nodes of one packed trie (its attention is dense over them)
        self.logit_rows = 16384  # vocabulary rows of logits one forward may return
        self.engine_generate = engine_generate  # KV-cached batched decoding, when the model has it

    # ---- the protocol -------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        return self.codec.render_chat is not None

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        if self.codec.render_chat is None:
            raise ConfigError(f"model {self.name} has no chat template", fix="evaluate a chat model or drop chat datasets")
        return self.codec.render_chat(messages)

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[Loglikelihood]:
        texts = [text for context, continuation in requests for text in _texts_to_encode(context, continuation)]
        encoded = self.codec.encode_all(texts)  # a context shared by four options is encoded once
        return self._score([self._split(context, continuation, encoded.__getitem__) for context, continuation in requests])

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
        if self.engine_generate is None:
            return [self._generate_one(r) for r in requests]
        return self._generate_with_engine(requests)

    def _generate_with_engine(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """Requests with the same sampling settings decode together on the engine's KV cache."""
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.max_new_tokens, r.stop, r.temperature, r.top_p, r.seed), []).append(i)
        out = [""] * len(requests)
        for members in groups.values():
            prompts = [self._prefix() + self.codec.encode(requests[i].prompt) for i in members]
            for i, text in zip(members, self.engine_generate(prompts, requests[members[0]], self.codec.stop_ids)):
                out[i] = text
        return out

    # ---- internals ----------------------------------------------------------------------------

    def _prefix(self) -> list[int]:
        codec = self.codec
        if codec.add_bos and codec.bos_id is not None:
            return [codec.bos_id]
        return []

    def _split(self, context: str, continuation: str, encode: Callable[[str], list[int]]) -> tuple[list[int], list[int]]:
        """(context ids, continuation ids), as lm-eval-harness 0.4 splits them: trailing whitespace
        of the context joins the answer; the continuation is the tail of encode(context +
        continuation). An empty context is the start of a document: scored after the model's
        start token (BOS, else end-of-text), or from the second token when it already is one."""
        codec, prefix = self.codec, self._prefix()
        if not context:
            ids = encode(continuation)
            if prefix:
                return prefix, ids
            start = codec.bos_id if codec.bos_id is not None else codec.eos_id
            if start is None or (ids and ids[0] == start):
                return ids[:1], ids[1:]
            return [start], ids
        context, continuation = _move_whitespace(context, continuation)
        whole = encode(context + continuation)
        context_ids = encode(context) if context else []
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
        the requests' tokens packed as tries (prefix_trie.py), several tries per forward."""
        from internlm.components.eval.prefix_trie import pack, tree_inputs

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
            owners, chunk_of, slot_of, targets = [], [], [], []
            for c, chunk in enumerate(batch):
                for r, path in zip(chunk.rows, chunk.paths):
                    target = rows[r][1]
                    owners += [r] * len(target)
                    chunk_of += [c] * len(target)
                    slot_of += [where[node] for node in path[len(path) - len(target) :]]
                    targets += target
            for r, logprob, greedy in _gather(logits, owners, chunk_of, slot_of, targets):
                results[r] = Loglikelihood(logprob, greedy, len(rows[r][1]))
        return results  # type: ignore[return-value]

    @torch.no_grad()
    def _generate_one(self, request: GenerationRequest) -> str:
        """Token by token over the full prefix (no KV cache): exact and simple; the inference
        engine's cached decoding replaces it for long generations. The stop token is not part of
        the text; the text is cut before the first stop string."""
        codec = self.codec
        ids = self._prefix() + codec.encode(request.prompt)
        sampled = request.temperature > 0
        params = SamplingParams(max_new_tokens=request.max_new_tokens, temperature=request.temperature,
                                top_p=request.top_p, stop_ids=tuple(codec.stop_ids), do_sample=sampled)
        generator = torch.Generator().manual_seed(request.seed) if sampled else None
        new: list[int] = []
        text = ""
        for token in uncached_tokens(self.forward, ids, params, generator, device=self.device, max_context=self.max_length):
            if token in codec.stop_ids:
                break
            new.append(token)
            text = codec.decode(new)
            cut = _first_stop(text, request.stop)
            if cut is not None:
                return text[:cut]
        return text


def _gather(logits: torch.Tensor, owners: list[int], chunk_of: list[int], slot_of: list[int],
            targets: list[int]) -> list[tuple[int, float, bool]]:
    """(row, summed log-probability, all tokens greedy) of every row scored in one forward: one
    log-softmax, one gather and one transfer for all of them."""
    device = logits.device
    logprobs = logits.float().log_softmax(-1)
    c, k, t = (torch.tensor(v, device=device) for v in (chunk_of, slot_of, targets))
    picked = logprobs[c, k, t]
    greedy = (logprobs.argmax(-1)[c, k] == t).float()
    distinct, owner = torch.unique(torch.tensor(owners, device=device), return_inverse=True)
    sums = torch.zeros(len(distinct), device=device, dtype=picked.dtype).index_add_(0, owner, picked)
    misses = torch.zeros(len(distinct), device=device).index_add_(0, owner, 1.0 - greedy)
    return [(r, lp, miss == 0) for r, lp, miss in zip(distinct.tolist(), sums.tolist(), misses.tolist())]


def _move_whitespace(context: str, continuation: str) -> tuple[str, str]:
    stripped = context.rstrip()
    return stripped, context[len(stripped) :] + continuation


def _texts_to_encode(context: str, continuation: str) -> tuple[str, ...]:
    if not context:
        return (continuation,)
    context, continuation = _move_whitespace(context, continuation)
    return (context, context + continuation) if context else (continuation,)


def _loglikelihood(logits: torch.Tensor, target: list[int]) -> Loglikelihood:
    """Summed log-probability of `target` under logits [n, vocab], and whether it is the argmax."""
    picked = logits.float().log_softmax(-1)
    wanted = torch.tensor(target, device=logits.device)
    logprob = picked.gather(-1, wanted[:, None]).sum().item()
    return Loglikelihood(logprob, bool((picked.argmax(-1) == wanted).all()), len(target))


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


def for_internlm_model(name: str, model: torch.nn.Module, tokenizer: Any, batch_tokens: int = 16384,
                       engine_generate: EngineGenerate | None = None) -> CausalLM:
    """Our model and sentencepiece tokenizer (BOS in front, as it was trained)."""
    from internlm.components.eval.prefix_trie import internlm_tree_forward
    from internlm.components.tokenizer.chat_template import has_chat_markers, render_chat, stop_ids

    has_markers = has_chat_markers(tokenizer)
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
    return CausalLM(name, lambda ids: model(ids), codec, device, max_positions(model), batch_tokens,
                    engine_generate=engine_generate, tree_forward=internlm_tree_forward(model))


def max_positions(model: torch.nn.Module) -> int:
    """The longest sequence our model was built for."""
    rotary = getattr(getattr(getattr(model, "config", None), "attention", None), "rotary", None)
    return int(getattr(rotary, "max_position", 2048))
