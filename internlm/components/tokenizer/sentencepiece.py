"""A sentencepiece tokenizer: InternLM's kind (BPE, byte fallback, split digits, no dummy prefix)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from internlm import paths
from internlm.components.tokenizer.chat_template import CHAT_MARKERS
from internlm.errors import ConfigError
from internlm.registry import register

BUNDLED = "bundled"


@dataclass
class SentencePieceConfig:
    path: str = BUNDLED  # a sentencepiece .model file; "bundled" = the small one shipped with internlm


def resolve_model_path(path: str) -> Path:
    return paths.BUNDLED_TOKENIZER if path == BUNDLED else Path(path).expanduser()


@register("tokenizer", "sentencepiece", SentencePieceConfig)
class SentencePieceTokenizer:
    """A sentencepiece .model file: encode, decode, special ids and a content hash."""

    def __init__(self, config: SentencePieceConfig):
        self.config = config
        self._path = resolve_model_path(config.path)
        self._processor, self._identity = _load(self._path)

    # Data workers pickle the tokenizer: send the path, reload there, and insist on the same file.
    def __getstate__(self) -> dict:
        return {"config": self.config, "identity": self._identity}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"])
        if self._identity != state["identity"]:
            raise ConfigError(
                f"tokenizer model {self._path} changed while in use",
                where="tokenizer.path",
                fix="do not overwrite a tokenizer model during a run",
            )

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        return self._processor.encode(text, add_bos=bos, add_eos=eos)

    def encode_batch(
        self, texts: list[str], bos: bool = False, eos: bool = False, num_threads: int = -1
    ) -> list[list[int]]:
        """Encode many texts on sentencepiece's own threads (-1 = all cores)."""
        return self._processor.encode(list(texts), add_bos=bos, add_eos=eos, num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self._processor.decode([int(i) for i in ids])

    def id_to_token(self, token_id: int) -> str:
        return self._processor.id_to_piece(int(token_id))

    def token_to_id(self, piece: str) -> int | None:
        """The id of one vocabulary piece, or None when the vocabulary lacks it."""
        token_id = self._processor.piece_to_id(piece)
        # sentencepiece answers unknown pieces with the unk id.
        return token_id if self._processor.id_to_piece(token_id) == piece else None

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    @property
    def bos_id(self) -> int | None:
        return _present(self._processor.bos_id())

    @property
    def eos_id(self) -> int | None:
        return _present(self._processor.eos_id())

    @property
    def unk_id(self) -> int | None:
        return _present(self._processor.unk_id())

    @property
    def pad_id(self) -> int | None:
        return _present(self._processor.pad_id())

    @property
    def special_ids(self) -> dict[str, int]:
        """The chat markers (``<eoh>``, ``<eoa>``, ...) that are single tokens of this vocabulary."""
        found = {marker: self.token_to_id(marker) for marker in CHAT_MARKERS}
        return {marker: token_id for marker, token_id in found.items() if token_id is not None}

    @property
    def model_path(self) -> Path:
        return self._path

    @property
    def identity(self) -> str:
        """sha256 of the model file: token stores record it to catch a tokenizer swap."""
        return self._identity


def _present(token_id: int) -> int | None:
    return None if token_id < 0 else token_id  # sentencepiece says -1 for "not defined"


def _load(path: Path) -> tuple[spm.SentencePieceProcessor, str]:
    """Read the file once: the same bytes give the processor and the identity hash."""
    fix = "set tokenizer.path=<a sentencepiece .model file>, or make one with task=train_tokenizer"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"tokenizer model not found: {path}", where="tokenizer.path", fix=fix) from None
    except OSError as exc:
        raise ConfigError(f"cannot read tokenizer model {path}: {exc}", where="tokenizer.path", fix=fix) from None
    processor = spm.SentencePieceProcessor()
    try:
        processor.load_from_serialized_proto(data)
    except (RuntimeError, OSError, TypeError) as exc:
        raise ConfigError(
            f"{path} is not a sentencepiece model ({str(exc).strip() or type(exc).__name__})",
            where="tokenizer.path",
            fix=fix,
        ) from None
    return processor, hashlib.sha256(data).hexdigest()
