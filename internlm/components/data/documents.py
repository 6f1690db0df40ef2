"""Reading text documents from files, with one policy for bad input.

Formats, by file name: ``.jsonl`` / ``.json`` hold one JSON object per line, the document in a
configurable field; any other file (``.txt``, ``.md``, ...) is one document, the whole file.
Blank lines of a JSONL file are not documents and are passed over.

Bad input, each with a reason code: ``malformed_json``, ``missing_field`` (absent or not a
string), ``invalid_utf8``, ``empty`` (nothing but whitespace), ``too_long`` (over the character
limit). With ``on_error="fail"`` the first one ends the run with its file:line; with ``"skip"`` it
is counted per reason and left out. Empty documents (and empty files) carry nothing to train on:
they are always skipped and counted, never an error (a corpus with no document left is refused).
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from internlm.errors import ConfigError

REASONS = ("malformed_json", "missing_field", "invalid_utf8", "empty", "too_long")
ON_ERROR = ("fail", "skip")
JSONL_SUFFIXES = (".jsonl", ".json")
T = TypeVar("T")


@dataclass
class BadDocument(Exception):
    reason: str  # one of REASONS, or a reader's own (chat.py)
    path: str
    line: int  # 1-based
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}: {self.detail}"

    def __reduce__(self):  # travels back from worker processes intact
        return (BadDocument, (self.reason, self.path, self.line, self.detail))


def is_jsonl(path: str | Path) -> bool:
    return str(path).endswith(JSONL_SUFFIXES)


def check_on_error(on_error: str, where: str) -> None:
    if on_error not in ON_ERROR:
        raise ConfigError(f"unknown on_error policy {on_error!r}", where=where, fix="use fail or skip")


def resolve_files(patterns: list[str] | str, where: str) -> list[Path]:
    """Files named by paths or globs (a directory means every file in it), in a stable order."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files: list[Path] = []
    seen: set[Path] = set()
    for pattern in patterns:
        pattern = os.path.expanduser(str(pattern))
        if glob.has_magic(pattern):
            found = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
            if not found:
                raise ConfigError(f"no file matches {pattern!r}", where=where, fix="check the path and the pattern")
        elif os.path.isdir(pattern):
            found = sorted(p for p in Path(pattern).rglob("*") if p.is_file() and not p.name.startswith("."))
            if not found:
                raise ConfigError(f"directory {pattern} holds no files", where=where, fix="point at a folder with data")
        elif os.path.isfile(pattern):
            found = [Path(pattern)]
        else:
            raise ConfigError(
                f"data file not found: {pattern}",
                where=where,
                fix="check the path (relative paths start at the current directory)",
            )
        files += [f for f in found if f not in seen]
        seen.update(found)
    return files


def parse_record(raw: bytes) -> Any:
    """One JSONL line as a JSON value; raises BadDocument (path and line filled in by the caller)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadDocument("invalid_utf8", "", 0, f"byte {exc.start} of the line") from None
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadDocument("malformed_json", "", 0, exc.msg) from None


def field_of(record: Any, name: str, kind: type) -> Any:
    """``record[name]``, which must be a ``kind``; raises BadDocument("missing_field") otherwise."""
    value = record.get(name) if isinstance(record, dict) else None
    if not isinstance(value, kind):
        found = "absent" if not isinstance(record, dict) or name not in record else type(value).__name__
        raise BadDocument("missing_field", "", 0, f"field {name!r} is {found}, need a {kind.__name__}")
    return value


def text_parser(text_field: str, max_chars: int) -> Callable[[bytes], str]:
    """Line -> document text, for `iter_jsonl`."""
    return lambda raw: check_text(field_of(parse_record(raw), text_field, str), max_chars)


def check_text(text: str, max_chars: int) -> str:
    if not text or text.isspace():
        raise BadDocument("empty", "", 0, "the document has no text")
    if max_chars and len(text) > max_chars:
        raise BadDocument("too_long", "", 0, f"{len(text)} characters, the limit is {max_chars}")
    return text


def iter_jsonl(
    path: Path, parse: Callable[[bytes], T], *, start: int = 0, end: int | None = None, first_line: int = 1
) -> Iterator[tuple[int, int, T | BadDocument]]:
    """(line number, byte offset past the line, ``parse(line)`` or BadDocument) for the lines in
    bytes [start, end) of a JSONL file; ``start`` must be a line start and ``first_line`` its number."""
    with open(path, "rb") as handle:
        handle.seek(start)
        position, number = start, first_line
        for raw in handle:
            if end is not None and position >= end:
                break
            position += len(raw)
            if raw.strip():
                try:
                    yield number, position, parse(raw)
                except BadDocument as bad:
                    bad.path, bad.line = str(path), number
                    yield number, position, bad
            number += 1


def read_whole_file(path: Path, max_chars: int) -> str | BadDocument:
    data = path.read_bytes()
    try:
        return check_text(data.decode("utf-8"), max_chars)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        return BadDocument("invalid_utf8", str(path), line, f"byte {exc.start} of the file")
    except BadDocument as bad:
        bad.path, bad.line = str(path), 1
        return bad


# What else may be wrong for each reason, in the reader's own fields.
REASON_HINTS = {
    "missing_field": "{section}.text_field names the JSON key that holds the text",
    "too_long": "{section}.max_chars sets the longest document accepted (0 = no limit)",
}


def bad_document_error(bad: BadDocument, where: str) -> ConfigError:
    section = where.rsplit(".", 1)[0]
    hint = REASON_HINTS.get(bad.reason)
    also = f"; {hint.format(section=section)}" if hint else ""
    return ConfigError(
        f"bad document at {bad.path}:{bad.line}: {bad.reason} ({bad.detail})",
        where=where,
        fix=f"fix or remove that line, or skip bad documents with {section}.on_error=skip{also}",
    )


class DocumentPolicy:
    """Applies ``on_error`` to what the readers yield: raise, or count and drop."""

    def __init__(self, on_error: str, where: str):
        check_on_error(on_error, where)
        self.on_error = on_error
        self.where = where
        self.skipped: Counter[str] = Counter()
        self.examples: list[str] = []  # a few file:line of skipped documents, for the report

    def accept(self, item: str | BadDocument) -> str | None:
        if not isinstance(item, BadDocument):
            return item
        if self.on_error == "fail" and item.reason != "empty":
            raise bad_document_error(item, self.where)
        self.skipped[item.reason] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{item.path}:{item.line} {item.reason}")
        return None


def read_documents(files: list[Path], *, text_field: str, max_chars: int, policy: DocumentPolicy) -> list[str]:
    """Every accepted document of these files, in order (the small, in-memory path)."""
    documents: list[str] = []
    for path in files:
        if path.stat().st_size == 0:
            policy.accept(BadDocument("empty", str(path), 1, "the file is empty"))
            continue
        if is_jsonl(path):
            items = (item for _, _, item in iter_jsonl(path, text_parser(text_field, max_chars)))
        else:
            items = iter([read_whole_file(path, max_chars)])
        documents += [doc for doc in map(policy.accept, items) if doc is not None]
    return documents
