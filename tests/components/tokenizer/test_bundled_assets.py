"""The bundled corpus and tokenizer: format, content, and that NOTICE.md's call remakes the tokenizer."""

from __future__ import annotations

import json
import re

import pytest

from internlm import paths
from internlm.components.tokenizer.sentencepiece import SentencePieceConfig, SentencePieceTokenizer
from internlm.components.tokenizer.train import train_sentencepiece

CORPUS_FILES = ["shakespeare.jsonl", "tang_song.jsonl"]


def documents(name: str) -> list[str]:
    with (paths.CORPUS_DIR / name).open(encoding="utf-8") as file:
        rows = [json.loads(line) for line in file]
    assert all(isinstance(row, dict) and set(row) == {"text"} for row in rows)
    return [row["text"] for row in rows]


def test_corpus_files_are_the_documented_ones():
    assert sorted(p.name for p in paths.CORPUS_DIR.glob("*.jsonl")) == CORPUS_FILES
    notice = (paths.ASSETS_DIR / "NOTICE.md").read_text(encoding="utf-8")
    assert all(f"corpus/{name}" in notice for name in CORPUS_FILES)
    total = sum((paths.CORPUS_DIR / name).stat().st_size for name in CORPUS_FILES)
    assert 1_000_000 < total < 3_000_000


@pytest.mark.parametrize("name", CORPUS_FILES)
def test_documents_are_clean_text(name):
    docs = documents(name)
    assert len(docs) > 200
    for doc in docs:
        assert doc.strip() == doc and doc
        assert "\x1b" not in doc  # no ANSI colour codes left from fortunes
        assert not re.search(r"^%$", doc, re.MULTILINE)  # no fortune separators
        assert "\n\n\n" not in doc and "Gutenberg" not in doc


def test_english_is_scenes_and_chinese_is_poems():
    english, chinese = documents("shakespeare.jsonl"), documents("tang_song.jsonl")
    assert english[1].startswith("ACT I.\n\nScene I. Elsinore.")
    assert sum(doc.count("Who's there?") for doc in english) >= 1
    assert any("床前明月光" in doc for doc in chinese)  # Li Bai's "Quiet Night Thought", in Tang 300
    assert all(re.search(r"[\u4e00-\u9fff]", doc) for doc in chinese)


def test_notice_call_remakes_the_bundled_tokenizer(tmp_path):
    """The exact call recorded in NOTICE.md gives the same vocabulary as the shipped file."""
    remade = train_sentencepiece(sorted(paths.CORPUS_DIR.glob("*.jsonl")), tmp_path / "remade.model", 4096)
    shipped = SentencePieceTokenizer(SentencePieceConfig())
    fresh = SentencePieceTokenizer(SentencePieceConfig(path=str(remade)))
    assert [fresh.id_to_token(i) for i in range(4096)] == [shipped.id_to_token(i) for i in range(4096)]
