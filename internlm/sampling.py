"""Choosing the next token, for every floor: what a caller may ask (`SamplingParams`), the rule that
turns one row of logits into a token id (`next_token`: repetition penalty, temperature, top-k,
top-p, in Hugging Face's order), and the plain uncached token loop (`uncached_tokens`).

One rule for the inference engine (batched, streamed, continuous), the evaluators' uncached
generation and training-time samples, so their tokens agree.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from internlm.errors import ConfigError, suggest

Forward = Callable[[torch.Tensor], torch.Tensor]  # input ids [1, S] -> logits [1, S, vocab]


@dataclass(frozen=True)
class SamplingParams:
    """What a caller may ask of one generation: length, sampling, stops. Checked before any work."""

    max_new_tokens: int = 1024  # upper bound on generated tokens (also bounded by the engine's max_context)
    temperature: float = 0.8  # 0 = greedy; InternLM's chat default is 0.8
    top_p: float = 0.8  # nucleus mass in (0, 1]; 1 = off
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    repetition_penalty: float = 1.0  # > 1 discourages tokens already in the prompt or output (CTRL / HF rule)
    seed: int | None = None  # per-request sampling seed: the same seed gives the same tokens
    stop_ids: tuple[int, ...] = ()  # token ids that end the completion (not part of its text)
    stop_strings: tuple[str, ...] = ()  # texts that end the completion (cut from its text)
    do_sample: bool = True  # False = greedy whatever the temperature

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "sampling") -> "SamplingParams":
        """Build from user input, refusing unknown fields with a close-match suggestion."""
        known = {f.name for f in fields(cls)}
        for name in values:
            if name not in known:
                raise ConfigError(f"unknown sampling field '{name}'{suggest(name, known)}", where=f"{where}.{name}",
                                  fix=f"use one of: {', '.join(sorted(known))}")
        values = dict(values)
        if isinstance(values.get("stop_strings"), str):  # OpenAI's `stop` may be one string
            values["stop_strings"] = (values["stop_strings"],)
        for name in ("stop_ids", "stop_strings"):
            if isinstance(values.get(name), (list, tuple)):
                values[name] = tuple(values[name])
        return cls(**values).validate(where)

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0

    def validate(self, where: str = "sampling") -> "SamplingParams":
        """self, or a ConfigError naming the first bad field."""

        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r} is out of range: {rule}", where=f"{where}.{name}",
                               fix=f"set {name} so that {rule}")

        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise bad("max_new_tokens", "it is an integer >= 1")
        if not _is_number(self.temperature) or self.temperature < 0:
            raise bad("temperature", "0 <= temperature (0 = greedy)")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise bad("top_p", "0 < top_p <= 1")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise bad("top_k", "top_k is an integer >= 0 (0 = off)")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "repetition_penalty > 0 (1 = off)")
        if self.seed is not None and not _is_int(self.seed):
            raise bad("seed", "seed is an integer or null")
        if not isinstance(self.stop_ids, tuple) or not all(_is_int(i) and i >= 0 for i in self.stop_ids):
            raise bad("stop_ids", "stop_ids is a list of token ids")
        if not isinstance(self.stop_strings, tuple) or not all(isinstance(s, str) and s for s in self.stop_strings):
            raise bad("stop_strings", "stop_strings is a list of non-empty strings")
        if not isinstance(self.do_sample, bool):
            raise bad("do_sample", "do_sample is true or false")
        return self


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value  # not NaN


def request_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A per-request generator: its tokens do not depend on what else runs in the batch."""
    if params.greedy:
        return None
    generator = torch.Generator(device=device)
    if params.seed is not None:
        generator.manual_seed(params.seed)
    else:
        generator.seed()
    return generator


def next_token(logits: torch.Tensor, params: SamplingParams, seen: torch.Tensor | None,
               generator: torch.Generator | None) -> int:
    """logits [vocab] (any float dtype); `seen` the ids of the prompt and output so far."""
    logits = logits.float()
    if params.repetition_penalty != 1.0 and seen is not None and seen.numel():
        picked = logits[seen]
        logits = logits.clone()
        logits[seen] = torch.where(picked > 0, picked / params.repetition_penalty, picked * params.repetition_penalty)
    if params.greedy:
        return int(torch.argmax(logits))
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.numel():
        threshold = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < params.top_p  # smallest set with mass >= top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def uncached_tokens(forward: Forward, prompt_ids: Sequence[int], params: SamplingParams,
                    generator: torch.Generator | None, *, device: torch.device | str = "cpu",
                    max_context: int | None = None) -> Iterator[int]:
    """The new token ids one by one, each from a forward over the whole sequence so far (its last
    `max_context` tokens when set; no KV cache): simple and exact, the reference the cached engine
    is checked against. At most params.max_new_tokens of them; a stop id is yielded, then the loop
    ends. A caller that stops on text (stop strings) simply stops iterating. Sampled on the CPU, so
    `generator` is a CPU one (the caller seeds it)."""
    ids = list(prompt_ids)
    for _ in range(params.max_new_tokens):
        context = ids[-max_context:] if max_context else ids
        logits = forward(torch.tensor([context], device=device))[0, -1].cpu()
        seen = torch.tensor(ids) if params.repetition_penalty != 1.0 else None
        token = next_token(logits, params, seen, generator)
        ids.append(token)
        yield token
        if token in params.stop_ids:
            return
