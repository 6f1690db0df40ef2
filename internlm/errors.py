"""One error type for everything a user can get wrong, printed as one clear message."""

from __future__ import annotations

import difflib
from typing import Iterable


class ConfigError(Exception):
    """A problem with the user's input: what went wrong, where, and how to fix it.

    `python -m internlm` prints it as a short block and exits with status 2, no traceback.
    """

    def __init__(self, what: str, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"error: {self.what}"]
        if self.where:
            lines.append(f"  where: {self.where}")
        if self.fix:
            lines.append(f"  fix:   {self.fix}")
        return "\n".join(lines)


class LostPeerError(ConfigError):
    """Another rank of the run died or froze, so this one cannot go on. Its process group cannot be
    torn down cleanly (gloo's and NCCL's threads may still wait on the lost peer and abort the
    interpreter's exit), so the CLI ends the process right after the message."""


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'lr'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
