"""Incremental detokenisation: text pieces that never split a UTF-8 character.

Byte-fallback tokenizers spell a rare character as several byte tokens; decoding a prefix that
ends inside one gives U+FFFD ("�": InternLM's stream_chat printed these, their issue #553). As in
vLLM and text-generation-inference, the decoder re-decodes only a window from the last emitted
point (cheap per token, and a tokenizer that strips a leading space at the start of a decode
strips it from both sides of the difference) and holds text back while it ends in U+FFFD.
`flush()` gives what is left when the completion ends. The pieces join to `decode(all ids)`.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # window start: the token before the last emitted piece
        self.read = 0  # ids up to here have been emitted as text

    def push(self, token_id: int) -> str:
        """The new, complete text after this token ('' while a character is still incomplete)."""
        self.ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Everything not yet emitted, incomplete characters included (the completion has ended)."""
        return self._advance(final=True)

    def _advance(self, final: bool) -> str:
        before = self.tokenizer.decode(self.ids[self.prefix:self.read])
        after = self.tokenizer.decode(self.ids[self.prefix:])
        if len(after) <= len(before) or (after.endswith(REPLACEMENT) and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before):]
