"""One request's life in the engine: its tokens, its text so far, when it ends, and its outbox."""

from __future__ import annotations

import queue
from dataclasses import dataclass

import torch

from internlm.inference.detokenize import IncrementalDecoder
from internlm.sampling import SamplingParams, next_token, request_generator


@dataclass(frozen=True)
class Delta:
    text: str  # new text (never half a UTF-8 character)
    token_ids: list[int]  # the tokens produced since the last delta (a stop token included)
    finish_reason: str | None = None  # "stop" | "length" on the last delta, else None


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]
    finish_reason: str  # "stop": a stop id or stop string; "length": max_new_tokens or max_context
    prompt_tokens: int
    completion_tokens: int


_END = object()  # outbox sentinel: no more deltas


class Request:
    def __init__(self, prompt: list[int], params: SamplingParams, limit: int, tokenizer, device: torch.device):
        self.prompt, self.params, self.limit = prompt, params, limit
        self.generated: list[int] = []
        self.slot: int | None = None
        self.prefilled = 0  # prompt tokens already in the cache (a long prompt is prefilled in chunks)
        self.cancelled = False
        self.finished = False
        self.outbox: queue.Queue = queue.Queue()
        self._decoder = IncrementalDecoder(tokenizer)
        self._generator = request_generator(params, device)
        self._held = ""  # decoded text not yet sent: it might be the start of a stop string
        self._pending_ids: list[int] = []
        self._stop_ids = frozenset(params.stop_ids)
        self._longest_stop = max((len(s) for s in params.stop_strings), default=0)

    @property
    def prompt_left(self) -> int:
        """Prompt tokens not yet prefilled (0: the request is decoding)."""
        return len(self.prompt) - self.prefilled

    @property
    def position(self) -> int:
        """Where the newest token goes in the cache (it has not been written yet)."""
        return len(self.prompt) + len(self.generated) - 1

    @property
    def needs_rows(self) -> bool:
        """True when this request's sampling looks at its own row beyond a plain argmax."""
        return not self.params.greedy or self.params.repetition_penalty != 1.0

    def choose(self, logits: torch.Tensor) -> int:
        seen = None
        if self.params.repetition_penalty != 1.0:
            seen = torch.tensor(self.prompt + self.generated, device=logits.device)
        return next_token(logits, self.params, seen, self._generator)

    def accept(self, token: int) -> None:
        """Take the next token: send the text it completes; end on a stop or the length limit."""
        self.generated.append(token)
        self._pending_ids.append(token)
        if token in self._stop_ids:
            return self._finish("stop", self._held + self._decoder.flush())  # the stop token has no text
        self._held += self._decoder.push(token)
        if self.params.stop_strings:
            cut = _first_stop(self._held, self.params.stop_strings)
            if cut is not None:
                return self._finish("stop", self._held)
        if len(self.generated) >= self.limit:
            return self._finish("length", self._held + self._decoder.flush())
        safe = len(self._held) - self._stop_prefix_len(self._held)
        if safe > 0:  # ids without text yet (half a character) ride along with the next text
            text, self._held = self._held[:safe], self._held[safe:]
            self._send(Delta(text, self._pending_ids))
            self._pending_ids = []

    def _stop_prefix_len(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string (held back)."""
        for size in range(min(len(text), self._longest_stop - 1), 0, -1):
            tail = text[-size:]
            if any(stop.startswith(tail) for stop in self.params.stop_strings):
                return size
        return 0

    def _finish(self, reason: str, text: str) -> None:
        cut = _first_stop(text, self.params.stop_strings)
        if cut is not None:  # the stop string and anything after it are not part of the reply
            text, reason = text[:cut], "stop"
        self._send(Delta(text, self._pending_ids, reason))
        self._pending_ids, self._held = [], ""
        self.finished = True
        self.outbox.put(_END)

    def fail(self, error: BaseException) -> None:
        self.finished = True
        self.outbox.put(error)

    def end_cancelled(self) -> None:
        self.finished = True
        self.outbox.put(_END)

    def _send(self, delta: Delta) -> None:
        self.outbox.put(delta)


def _first_stop(text: str, stops: tuple[str, ...]) -> int | None:
    found = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(found) if found else None


class RequestHandle:
    """What `Engine.submit` returns: iterate for Deltas (blocking), `.cancel()` to stop early."""

    def __init__(self, request: Request, wake):
        self._request, self._wake = request, wake

    @property
    def prompt_tokens(self) -> int:
        return len(self._request.prompt)

    def __iter__(self):
        while True:
            item = self._request.outbox.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def cancel(self) -> None:
        """Stop generating and free the slot (at the engine's next step); iteration then ends."""
        self._request.cancelled = True
        self._wake()

    def result(self) -> Completion:
        """Wait for the end and return the whole completion."""
        deltas = list(self)
        ids = [i for d in deltas for i in d.token_ids]
        reason = deltas[-1].finish_reason if deltas else None
        return Completion("".join(d.text for d in deltas), ids, reason or "stop", self.prompt_tokens, len(ids))
