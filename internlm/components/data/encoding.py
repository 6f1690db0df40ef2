"""Documents -> one token stream with a document index."""

from __future__ import annotations

import itertools
from typing import Protocol, Sequence

import numpy as np


class Tokenizer(Protocol):
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    def encode_batch(
        self, texts: list[str], bos: bool = False, eos: bool = False, num_threads: int = -1
    ) -> list[list[int]]: ...


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id (uint16 up to 65,536 ids, else uint32)."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def join_documents(encoded: Sequence[Sequence[int]], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (tokens laid end to end, offsets of each document's first token)."""
    lengths = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
    tokens = np.fromiter(itertools.chain.from_iterable(encoded), dtype=dtype, count=int(lengths.sum()))
    starts = np.zeros(len(encoded), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return tokens, starts


def encode_documents(
    tokenizer: Tokenizer, documents: list[str], *, add_bos: bool, num_threads: int = -1
) -> tuple[np.ndarray, np.ndarray]:
    """Every document as ``[BOS] ids EOS`` (BOS when asked and defined), joined in one stream."""
    if tokenizer.eos_id is None:
        from internlm.errors import ConfigError

        raise ConfigError(
            "the tokenizer has no EOS token, needed to end documents",
            where="tokenizer",
            fix="use a sentencepiece model with an eos piece",
        )
    bos = add_bos and tokenizer.bos_id is not None
    encoded = tokenizer.encode_batch(documents, bos=bos, eos=True, num_threads=num_threads)
    return join_documents(encoded, token_dtype(tokenizer.vocab_size))
