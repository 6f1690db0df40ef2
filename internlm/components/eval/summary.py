"""OpenCompass's summary layout: dataset, version, metric, mode, one column per model."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass


@dataclass
class Row:
    dataset: str
    version: str
    metric: str
    mode: str
    values: dict[str, float | None]  # model -> metric value


HEADER = ("dataset", "version", "metric", "mode")


def _cells(rows: list[Row], models: list[str]) -> list[list[str]]:
    table = [list(HEADER) + models]
    for row in rows:
        values = [("-" if row.values.get(m) is None else f"{row.values[m]:.2f}") for m in models]
        table.append([row.dataset, row.version, row.metric, row.mode] + values)
    return table


def to_text(rows: list[Row], models: list[str]) -> str:
    """The terminal table (aligned columns, a dashed rule under the header)."""
    table = _cells(rows, models)
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def to_markdown(rows: list[Row], models: list[str]) -> str:
    table = _cells(rows, models)
    lines = ["| " + " | ".join(table[0]) + " |", "|" + "|".join("---" for _ in table[0]) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[Row], models: list[str]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(_cells(rows, models))
    return out.getvalue()
