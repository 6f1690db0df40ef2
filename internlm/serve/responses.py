"""Response bodies and server-sent-event chunks in OpenAI's shapes."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

DONE = b"data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode()


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@dataclass
class Choice:
    """What one choice has produced so far."""

    text: str = ""
    completion_tokens: int = 0
    finish_reason: str | None = None

    def add(self, delta) -> None:
        self.text += delta.text
        self.completion_tokens += len(delta.token_ids)
        self.finish_reason = delta.finish_reason or self.finish_reason


@dataclass
class Shape:
    """One response's identity and how its choices are written (chat messages or plain text)."""

    chat: bool
    model: str
    id: str = field(default="")
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self):
        self.id = self.id or ("chatcmpl-" if self.chat else "cmpl-") + uuid.uuid4().hex[:24]

    def head(self, object_kind: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_kind, "created": self.created, "model": self.model}

    def full(self, choices: list[Choice], prompt_tokens: int) -> dict[str, Any]:
        """The non-streaming response."""
        if self.chat:
            body = [{"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
                     "finish_reason": c.finish_reason} for i, c in enumerate(choices)]
        else:
            body = [{"index": i, "text": c.text, "logprobs": None, "finish_reason": c.finish_reason}
                    for i, c in enumerate(choices)]
        completion = sum(c.completion_tokens for c in choices)
        return {**self.head("chat.completion" if self.chat else "text_completion"), "choices": body,
                "usage": usage(prompt_tokens, completion)}

    def chunk(self, index: int, text: str | None, finish_reason: str | None, include_usage: bool,
              role: bool = False) -> dict[str, Any]:
        """One streamed chunk of one choice (`role=True`: the chat stream's opening chunk)."""
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            payload = {**self.head("chat.completion.chunk"), "choices": [choice]}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
            payload = {**self.head("text_completion"), "choices": [choice]}
        if include_usage:
            payload["usage"] = None  # as OpenAI: null on every chunk but the last
        return payload

    def usage_chunk(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self.head(kind), "choices": [], "usage": usage(prompt_tokens, completion_tokens)}
