"""Helpers for the data tests: a real (tiny) sentencepiece tokenizer and corpus writers."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import sentencepiece as spm

from internlm.components.tokenizer.chat_template import CHAT_MARKERS
from internlm.components.tokenizer.sentencepiece import SentencePieceConfig, SentencePieceTokenizer

WORDS = "the king queen love night day sword crown heart blood river moon 春 花 月 夜 山 水 风 雨".split()


def train_tokenizer(path: Path, vocab_size: int, seed: int = 0) -> SentencePieceTokenizer:
    """Trains in ~0.1 s: InternLM's settings (BPE, byte fallback, split digits, no dummy prefix)."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(2000)]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=False,
        user_defined_symbols=list(CHAT_MARKERS),
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    path.write_bytes(model.getvalue())
    return SentencePieceTokenizer(SentencePieceConfig(path=str(path)))


def random_documents(count: int, seed: int = 0, min_words: int = 3, max_words: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))) for _ in range(count)]


def write_jsonl(path: Path, documents: list[str], field: str = "text") -> Path:
    path.write_text("".join(json.dumps({field: d}, ensure_ascii=False) + "\n" for d in documents), encoding="utf-8")
    return path


def failing_run_shard(job):
    """`run_shard`, except shards listed in $INTERNLM_TEST_FAIL_SHARDS die (a simulated kill)."""
    import os

    from internlm.components.data import store_writer

    if str(job.index) in os.environ.get("INTERNLM_TEST_FAIL_SHARDS", "").split(","):
        raise RuntimeError(f"simulated kill in shard {job.index}")
    return store_writer.REAL_RUN_SHARD(job)


def write_bin(path, samples, raw_meta=False):
    """What InternLM's tools/tokenizer.py writes: JSON lines + np.save'd int32 (offset, length)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta, offset, blob = [], 0, b""
    for tokens in samples:
        line = (json.dumps({"tokens": tokens}) + "\n").encode()
        meta.append((offset, len(tokens)))
        offset += len(line)
        blob += line
    path.write_bytes(blob)
    table = np.array(meta, dtype=np.int32)
    if raw_meta:
        table.tofile(f"{path}.meta")
    else:
        with open(f"{path}.meta", "wb") as handle:
            np.save(handle, table)
