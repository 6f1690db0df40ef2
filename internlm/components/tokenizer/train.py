"""Train a sentencepiece BPE tokenizer with InternLM's settings.

InternLM's tokenizer: BPE with byte fallback (no text is ever unknown), digits split one per token,
no dummy prefix (a text is not given a leading space), unk 0, bos 1, eos 2 and no pad. Newlines
and runs of spaces are kept as they are (identity normalisation), so code and the chat format's
line breaks round-trip. The chat markers are user-defined symbols: always one token each.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import sentencepiece as spm

from internlm.components.tokenizer.chat_template import CHAT_MARKERS
from internlm.errors import ConfigError

# sentencepiece drops training sentences longer than this many bytes; lines are far shorter.
MAX_SENTENCE_BYTES = 16384
# Every printable ASCII character gets its own piece, however rare in the corpus (a "0" must not
# cost a byte-fallback token because Shakespeare seldom wrote one).
PRINTABLE_ASCII = "".join(chr(code) for code in range(33, 127))

INTERNLM_SETTINGS = dict(
    model_type="bpe",
    byte_fallback=True,
    split_digits=True,
    add_dummy_prefix=False,
    normalization_rule_name="identity",  # keep newlines, tabs and full-width forms as written
    remove_extra_whitespaces=False,
    allow_whitespace_only_pieces=True,  # runs of spaces (indentation) become pieces
    unk_id=0,
    bos_id=1,
    eos_id=2,
    pad_id=-1,
    user_defined_symbols=list(CHAT_MARKERS),
    required_chars=PRINTABLE_ASCII,
    max_sentence_length=MAX_SENTENCE_BYTES,
    input_sentence_size=0,  # learn from every sentence: sampling would make the result depend on a seed
)


def train_sentencepiece(
    texts: Iterable[str] | list[Path],
    output: Path,
    vocab_size: int,
    *,
    character_coverage: float = 0.9995,
    num_threads: int = 2,
) -> Path:
    """Train on ``texts`` (strings, or paths of ``.txt`` / ``.jsonl`` files with a "text" field) and
    write the model to ``output`` atomically. The same input gives the same file, byte for byte.

    sentencepiece learns from sentences, so every text is cut into its non-empty lines.
    """
    output = Path(output)
    lines = _CountingLines(texts)
    model = io.BytesIO()
    with open(os.devnull, "w") as quiet:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=model,
                logstream=quiet,
                vocab_size=vocab_size,
                character_coverage=character_coverage,
                num_threads=num_threads,
                **INTERNLM_SETTINGS,
            )
        except RuntimeError as exc:  # sentencepiece reports bad settings and empty input this way
            raise _training_error(exc, lines, vocab_size, output) from None
    _write_atomically(output, model.getvalue())
    return output


def _training_error(exc: RuntimeError, lines: _CountingLines, vocab_size: int, output: Path) -> Exception:
    if lines.error is not None:
        return lines.error
    if lines.count == 0:
        return ConfigError("no text to train the tokenizer on", where=str(output), fix="give it non-empty texts")
    # "INTERNAL: src/trainer_interface.cc(638) [condition] What went wrong." -> "What went wrong."
    reason = str(exc).splitlines()[0].rsplit("] ", 1)[-1].strip()
    return ConfigError(
        f"sentencepiece cannot make {vocab_size} pieces from {lines.count} lines: {reason}",
        where=str(output),
        fix="set vocab_size as sentencepiece says (it needs room for 256 bytes, 8 special pieces and every "
        "character kept, and enough text to learn the rest), lower character_coverage, or train on more text",
    )


class _CountingLines:
    """The non-empty lines of the texts, counted as sentencepiece reads them. sentencepiece turns an
    error raised while reading into a RuntimeError, so the original is kept to be raised again."""

    def __init__(self, texts: Iterable[str] | list[Path]):
        self.texts, self.count, self.error = texts, 0, None

    def __iter__(self) -> Iterator[str]:
        try:
            for text in _texts(self.texts):
                for line in text.splitlines():
                    if line.strip():
                        self.count += 1
                        yield line
        except Exception as exc:
            self.error = exc
            raise


def _texts(sources: Iterable[str] | list[Path]) -> Iterator[str]:
    for source in sources:
        if isinstance(source, Path):
            yield from _read(source)
        else:
            yield source


def _read(path: Path) -> Iterator[str]:
    if not path.is_file():
        raise ConfigError(f"training text not found: {path}", fix="give existing .txt or .jsonl files")
    if path.suffix != ".jsonl":
        yield path.read_text(encoding="utf-8")
        return
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if line.strip():
                yield _text_of(line, f"{path}:{number}")


def _text_of(line: str, where: str) -> str:
    try:
        text = json.loads(line)["text"]
    except (ValueError, TypeError, KeyError):
        text = None
    if not isinstance(text, str):
        raise ConfigError("a JSONL line is not an object with a string \"text\"", where=where,
                          fix='write one {"text": "..."} object per line')
    return text


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.chmod(temp, 0o644)  # mkstemp makes files only their owner can read
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
