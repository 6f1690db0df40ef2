"""Fixtures of the interop tests: a sentencepiece tokenizer like InternLM's."""

from __future__ import annotations

from pathlib import Path

import pytest

from interop_helpers import CHAT_SYMBOLS
from internlm import paths


@pytest.fixture(scope="session")
def tokenizer_model(tmp_path_factory) -> Path:
    """The bundled tokenizer; before it existed, a throwaway one trained like it."""
    if paths.BUNDLED_TOKENIZER.is_file():
        return paths.BUNDLED_TOKENIZER
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("spm")
    text = folder / "corpus.txt"
    text.write_text("The quick brown fox jumps over the lazy dog 12345.\n中文分词测试，你好世界。\n" * 200)
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(folder / "tok"), vocab_size=380, model_type="bpe", hard_vocab_limit=False,
        byte_fallback=True, split_digits=True, add_dummy_prefix=False, user_defined_symbols=CHAT_SYMBOLS,
        normalization_rule_name="identity", character_coverage=1.0,
    )
    return folder / "tok.model"
