"""InternLM's chat format, as text and as token ids with an exact loss mask.

One conversation renders as::

    <|System|>:{content}\\n            (optional; any system message, where it stands)
    <|User|>:{query}<eoh>\\n
    <|Bot|>:{response}<eoa>\\n
    ...                                  (one user + one assistant line per turn)
    <|Bot|>:                             (only with add_generation_prompt)

with ONE BOS token in front (the original code sent two by mistake). InternLM v0.2 had no system
turn; the ``<|System|>:{content}\\n`` line is the one its later chat models used. The model learns
to end a response with ``<eoa>``; generation stops at ``<eoa>`` or EOS (`stop_ids`).

`render_chat` gives the text (without the BOS, which is a token id, not text); `JINJA_CHAT_TEMPLATE`
is the same format for a Hugging Face ``tokenizer_config.json`` (it starts with ``{{ bos_token }}``).
"""

from __future__ import annotations

import re
from typing import Any, Protocol, Sequence

from internlm.errors import ConfigError

USER = "<|User|>"
BOT = "<|Bot|>"
SYSTEM = "<|System|>"
END_OF_HUMAN = "<eoh>"
END_OF_ASSISTANT = "<eoa>"
# Trained as user-defined symbols, so each marker is one token and never merges with its neighbours.
CHAT_MARKERS = (USER, BOT, SYSTEM, END_OF_HUMAN, END_OF_ASSISTANT)

ROLES = ("system", "user", "assistant")

SPACE_PIECE = "\u2581"  # sentencepiece's "▁": a space inside a piece
_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")  # a byte-fallback piece: one byte of the text

# The same format in Jinja (transformers renders it with trim_blocks and lstrip_blocks on).
JINJA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|System|>:' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|User|>:' + message['content'] + '<eoh>\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|Bot|>:' + message['content'] + '<eoa>\\n' }}"
    "{% else %}{{ raise_exception('role must be system, user or assistant') }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|Bot|>:' }}{% endif %}"
)


class ChatTokenizer(Protocol):
    """What `encode_chat` and `stop_ids` need from a tokenizer."""

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int | None: ...

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]: ...

    def token_to_id(self, piece: str) -> int | None: ...

    def id_to_token(self, token_id: int) -> str: ...


def _segments(messages: Sequence[dict[str, Any]], add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_assistant_output) pieces, in order.

    An assistant turn splits into the prompt ``<|Bot|>:`` (not learned), the response with its
    ``<eoa>`` (learned: the model must produce the stop marker) and the trailing newline (not learned:
    generation has already stopped at ``<eoa>``).
    """
    segments: list[tuple[str, bool]] = []
    for index, message in enumerate(messages):
        role, content = _checked(message, index)
        if role == "system":
            segments.append((f"{SYSTEM}:{content}\n", False))
        elif role == "user":
            segments.append((f"{USER}:{content}{END_OF_HUMAN}\n", False))
        else:
            segments += [(f"{BOT}:", False), (f"{content}{END_OF_ASSISTANT}", True), ("\n", False)]
    if add_generation_prompt:
        segments.append((f"{BOT}:", False))
    return segments


def _checked(message: Any, index: int) -> tuple[str, str]:
    where = f"chat message {index}"
    if not isinstance(message, dict):
        raise ConfigError(f"a chat message must be a dict, got {type(message).__name__}", where=where,
                          fix='write it as {"role": "user", "content": "..."}')
    role, content = message.get("role"), message.get("content")
    if role not in ROLES:
        raise ConfigError(f"unknown chat role {role!r}", where=where, fix=f"use one of: {', '.join(ROLES)}")
    if not isinstance(content, str):
        raise ConfigError(f"chat content must be a string, got {type(content).__name__}", where=where,
                          fix='give each message a text "content"')
    return role, content


def render_chat(messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    """The conversation as InternLM chat text (no BOS: that is a token id, added by `encode_chat`).

    ``messages`` are ``{"role": "system" | "user" | "assistant", "content": str}`` dicts; with
    ``add_generation_prompt`` the text ends with ``<|Bot|>:`` so a model continues as the assistant.
    """
    return "".join(text for text, _ in _segments(messages, add_generation_prompt))


def encode_chat(
    tokenizer: ChatTokenizer, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = False
) -> tuple[list[int], list[bool]]:
    """Token ids of the conversation (BOS first) and a mask, True exactly on what the model must
    generate: each assistant response and its ``<eoa>``, not the newline after it.

    The rendered text is encoded WHOLE, as sentencepiece and transformers' `apply_chat_template`
    do, so training, chat, serving and HF agree on the ids. The mask comes from each token's
    place in the text: a token is learned when it covers any learned character. Where a reply's
    first characters merge with the ``:`` before them (``:《``, ``:--`` in the bundled vocabulary)
    that merged token is learned: producing it is how the model starts such a reply.
    """
    segments = _segments(messages, add_generation_prompt)
    text = "".join(piece for piece, _ in segments)
    ids = tokenizer.encode(text)
    spans = _byte_spans(tokenizer, ids, text)
    if spans is None:  # a tokenizer whose pieces do not spell the text (normalisation, <unk>)
        return _encode_piecewise(tokenizer, segments)
    learned_ranges, offset = [], 0
    for piece, learned in segments:
        size = len(piece.encode("utf-8"))
        if learned:
            learned_ranges.append((offset, offset + size))
        offset += size
    mask = [any(begin < stop and start < end for start, stop in learned_ranges) for begin, end in spans]
    if tokenizer.bos_id is not None:
        return [tokenizer.bos_id, *ids], [False, *mask]
    return ids, mask


def encode_chat_prompt(tokenizer: ChatTokenizer, messages: Sequence[dict[str, Any]]) -> list[int]:
    """The ids a model is prompted with to reply: one BOS, the conversation, then ``<|Bot|>:``."""
    return encode_chat(tokenizer, messages, add_generation_prompt=True)[0]


def _byte_spans(tokenizer: ChatTokenizer, ids: list[int], text: str) -> list[tuple[int, int]] | None:
    """Each token's [begin, end) in the UTF-8 bytes of `text`, from its piece; None when the
    pieces do not add up to the text exactly."""
    spans, offset = [], 0
    for token_id in ids:
        piece = tokenizer.id_to_token(token_id)
        size = 1 if _BYTE_PIECE.fullmatch(piece) else len(piece.replace(SPACE_PIECE, " ").encode("utf-8"))
        spans.append((offset, offset + size))
        offset += size
    return spans if offset == len(text.encode("utf-8")) else None


def _encode_piecewise(tokenizer: ChatTokenizer, segments: list[tuple[str, bool]]) -> tuple[list[int], list[bool]]:
    """Each run of same-mask text encoded on its own: exact masks for any tokenizer."""
    ids: list[int] = []
    mask: list[bool] = []
    if tokenizer.bos_id is not None:
        ids.append(tokenizer.bos_id)
        mask.append(False)
    for text, learned in _merged(segments):
        piece_ids = tokenizer.encode(text)
        ids += piece_ids
        mask += [learned] * len(piece_ids)
    return ids, mask


def _merged(segments: list[tuple[str, bool]]) -> list[tuple[str, bool]]:
    """Join neighbouring pieces with the same flag, so text is only cut where the mask changes."""
    merged: list[tuple[str, bool]] = []
    for text, learned in segments:
        if merged and merged[-1][1] == learned:
            merged[-1] = (merged[-1][0] + text, learned)
        else:
            merged.append((text, learned))
    return merged


def has_chat_markers(tokenizer: ChatTokenizer) -> bool:
    """True when the tokenizer knows the chat markers as tokens, so chat text encodes as trained
    (the system marker is not required: InternLM v0.2 had no system turn)."""
    return all(tokenizer.token_to_id(marker) is not None for marker in CHAT_MARKERS if marker != SYSTEM)


def stop_ids(tokenizer: ChatTokenizer) -> list[int]:
    """Ids that end a chat response: EOS and, when it is one token, ``<eoa>``."""
    ids = [tokenizer.eos_id, tokenizer.token_to_id(END_OF_ASSISTANT)]
    return [i for i in dict.fromkeys(ids) if i is not None]
