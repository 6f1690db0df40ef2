"""What the web demo does with a conversation, apart from drawing it.

The controls are InternLM's demo's: Max Length (prompt plus reply, in tokens, as its
`generate_interactive` counted it), Top P and Temperature (0 = greedy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from internlm.components.tokenizer.chat_template import stop_ids
from internlm.inference import SamplingParams

CURSOR = "▌"  # drawn after the partial reply while it streams


@dataclass(frozen=True)
class Controls:
    max_length: int = 2048  # prompt + reply tokens
    top_p: float = 0.8
    temperature: float = 0.7


class TooLong(Exception):
    """The conversation leaves no room for a reply within Max Length."""


def reply_budget(prompt_tokens: int, controls: Controls, max_context: int) -> int:
    """New tokens the reply may use: Max Length minus the prompt, within the model's context."""
    budget = min(controls.max_length, max_context) - prompt_tokens
    if budget < 1:
        raise TooLong(f"the conversation has {prompt_tokens} tokens, which leaves no room for a reply within "
                      f"Max Length {controls.max_length}: clear the chat history or raise Max Length")
    return budget


def stream_reply(engine, messages: list[dict], controls: Controls) -> Iterator[str]:
    """The reply to `messages` (role/content dicts ending with the user's turn), as growing text."""
    prompt = engine.render_chat(messages)
    params = SamplingParams(
        max_new_tokens=reply_budget(len(prompt), controls, engine.max_context),
        temperature=controls.temperature,
        top_p=max(controls.top_p, 0.01),  # the slider reaches 0; the engine needs top_p > 0
        stop_ids=tuple(stop_ids(engine.tokenizer)),
        do_sample=controls.temperature > 0,
    )
    text = ""
    for delta in engine.stream(prompt, params):
        text += delta.text
        yield text
