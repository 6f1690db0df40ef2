"""One evaluation item, whatever the dataset's file format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LETTERS = "ABCDEFGHIJ"


@dataclass
class Item:
    id: str  # stable across runs: file name + line or the dataset's own id
    fields: dict[str, str]  # what templates can name: question, A, B, ..., passage, text, ...
    subject: str = ""  # few-shot examples come from the same subject
    choices: list[str] = field(default_factory=list)  # option texts (choice datasets)
    labels: list[str] = field(default_factory=list)  # option labels: A, B, ... or class answers
    gold: Any = None  # index into choices, or the reference answer string, or None (code)

    def as_fields(self) -> dict[str, str]:
        out = dict(self.fields)
        out.setdefault("subject", self.subject)
        lettered = [(label, choice) for label, choice in zip(self.labels, self.choices) if len(label) == 1 and label in LETTERS]
        for label, choice in lettered:
            out.setdefault(label, choice)
        if lettered:  # every option on its own line, however many there are
            out.setdefault("options", "\n".join(f"{label}. {choice}" for label, choice in lettered))
        return out
