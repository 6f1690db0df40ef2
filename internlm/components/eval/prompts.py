"""Prompts from templates: the hint, few-shot examples from the same subject (never the item
itself), the item, and each option's continuation; the template's short hash is its version."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from typing import Sequence

from internlm.components.eval.config import DatasetConfig, TemplateConfig
from internlm.components.eval.items import Item

_FIELD = re.compile(r"\{(\w+)\}")


def fill(template: str, fields: dict[str, str]) -> str:
    """Replace {name} by fields[name]; braces that name no field (LaTeX, code) stay as written."""
    return _FIELD.sub(lambda m: str(fields[m.group(1)]) if m.group(1) in fields else m.group(0), template)


def version(config: DatasetConfig) -> str:
    """A short hash of everything that shapes the prompt (OpenCompass's dataset version column)."""
    shape = {"template": asdict(config.template), "fewshot": config.fewshot, "fewshot_ids": config.fewshot_ids,
             "labels": config.labels, "chat": config.chat, "evaluator": config.evaluator, "options": dict(config.options)}
    return hashlib.sha256(json.dumps(shape, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:6]


def answer_fields(item: Item, option: int | None) -> dict[str, str]:
    """The item's fields plus {label}/{choice} of one option (None: of the gold answer)."""
    fields = item.as_fields()
    index = item.gold if option is None else option
    if isinstance(index, int) and item.choices:
        fields["label"], fields["choice"] = item.labels[index], item.choices[index]
    return fields


def select_shots(item: Item, pool: Sequence[Item], k: int, ids: Sequence[int] | None) -> list[Item]:
    """k examples of the item's subject from the pool, at fixed positions, skipping the item."""
    if k <= 0:
        return []
    # Never the item itself, nor a duplicate of it (MMLU's test split repeats a few questions).
    same = [x for x in pool if x.subject == item.subject and x is not item and x.fields != item.fields]
    chosen = [same[i] for i in ids if i < len(same)] if ids is not None else same
    return chosen[:k]


def with_labels(item: Item, labels: list[str] | None) -> Item:
    if labels is None:
        return item
    if len(labels) != len(item.choices):
        from internlm.errors import ConfigError

        raise ConfigError(f"{len(labels)} labels for {len(item.choices)} classes", where="labels", fix="give one answer text per class")
    item.labels = list(labels)
    return item


def render_plain(item: Item, shots: Sequence[Item], template: TemplateConfig) -> str:
    """The context text up to where the answer begins."""
    parts = [fill(template.hint, item.as_fields())]
    for shot in shots:
        parts.append(fill(template.question, shot.as_fields()) + fill(template.answer, answer_fields(shot, None)) + template.separator)
    parts.append(fill(template.question, item.as_fields()))
    return "".join(parts)


def chat_messages(item: Item, shots: Sequence[Item], template: TemplateConfig) -> list[dict[str, str]]:
    """The same prompt as a conversation: each example a user turn and an assistant turn."""
    hint = fill(template.hint, item.as_fields())
    messages: list[dict[str, str]] = []
    for shot in shots:
        messages.append({"role": "user", "content": fill(template.question, shot.as_fields())})
        messages.append({"role": "assistant", "content": fill(template.answer, answer_fields(shot, None)).strip()})
    messages.append({"role": "user", "content": fill(template.question, item.as_fields())})
    messages[0]["content"] = hint + messages[0]["content"]
    return messages


def continuations(item: Item, template: TemplateConfig) -> list[str]:
    """What follows the context for each option (choice datasets)."""
    return [fill(template.answer, answer_fields(item, i)) for i in range(len(item.choices))]
