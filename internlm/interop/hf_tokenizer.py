"""The sentencepiece tokenizer as Hugging Face files that encode exactly like sentencepiece.

transformers' Llama tokenizer rebuilds its pre-tokenizer from its own flags and cannot express every
sentencepiece setting, so the export ships a ``tokenizer.json`` (converted by transformers from the
.model file, following the file's own normalizer spec: dummy prefix or not, user-defined pieces such
as ``<eoa>`` kept whole) under the generic ``PreTrainedTokenizerFast`` class, which loads that file
as is. ``tokenizer.model`` is copied too, for tools that read sentencepiece directly. The export is
checked before it is kept: the reloaded tokenizer must give sentencepiece's ids on probe texts.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm
from tokenizers import processors

from internlm.components.tokenizer.chat_template import END_OF_ASSISTANT
from internlm.errors import ConfigError

# English, Chinese, digits, whitespace runs, byte fallback and the chat markers: where converters slip.
PROBE_TEXTS = (
    "The capital of France is Paris.",
    "  two leading spaces,  double  gaps and a trailing space ",
    "line one\nline two\n\n\ttabbed",
    "中文分词测试：你好，世界！今天天气很好。",
    "digits 0123456789, 3.14159 and 2024-11-05",
    "bytes: émoji 🙂, ½, ü, \u200b",
    "<|User|>:hello<eoh>\n<|Bot|>:hi there<eoa>\n<|Bot|>:",
)


@dataclass(frozen=True)
class TokenizerIds:
    """The ids an export's config and generation config need."""

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    stop_ids: tuple[int, ...]  # eos and, when one token, <eoa>


def tokenizer_ids(model_file: Path) -> TokenizerIds:
    processor = _processor(model_file)
    eos = _present(processor.eos_id())
    eoa = processor.piece_to_id(END_OF_ASSISTANT)
    eoa = eoa if processor.id_to_piece(eoa) == END_OF_ASSISTANT else None  # unknown pieces map to unk
    stops = tuple(i for i in dict.fromkeys((eos, eoa)) if i is not None)
    return TokenizerIds(processor.get_piece_size(), _present(processor.bos_id()), eos, stops)


def _present(token_id: int) -> int | None:
    return None if token_id < 0 else token_id  # sentencepiece says -1 for "not defined"


def write_hf_tokenizer(model_file: Path, out_dir: Path, chat_template: str | None, model_max_length: int) -> None:
    """tokenizer.json, tokenizer.model, tokenizer_config.json (with the chat template) and
    special_tokens_map.json in ``out_dir``; raises ConfigError if the result encodes differently."""
    model_file = Path(model_file).expanduser()
    processor = _processor(model_file)
    shutil.copyfile(model_file, out_dir / "tokenizer.model")
    bos = (processor.id_to_piece(processor.bos_id()), processor.bos_id()) if processor.bos_id() >= 0 else None
    _convert(model_file, out_dir / "tokenizer.json", bos)
    specials = {
        f"{role}_token": processor.id_to_piece(token_id)
        for role, token_id in (("bos", processor.bos_id()), ("eos", processor.eos_id()), ("unk", processor.unk_id()))
        if token_id >= 0
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # loads tokenizer.json as is (transformers 4 and 5)
        **specials,
        "add_bos_token": processor.bos_id() >= 0,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
    check_same_encoding(processor, out_dir)


def check_same_encoding(processor: spm.SentencePieceProcessor, folder: Path) -> None:
    """The exported tokenizer must give sentencepiece's ids (BOS first) on every probe text."""
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(folder))
    bos = [processor.bos_id()] if processor.bos_id() >= 0 else []
    for text in PROBE_TEXTS:
        expected, got = bos + processor.encode(text), hf(text)["input_ids"]
        if got != expected:
            raise ConfigError(
                f"the exported Hugging Face tokenizer encodes {text!r} as {got}, sentencepiece as {expected}",
                where="export tokenizer",
                fix="use the transformers version this was tested with (5.24), or export without the tokenizer",
            )


def _convert(model_file: Path, tokenizer_json: Path, bos: tuple[str, int] | None) -> None:
    """transformers' own conversion of the .model file (the generic backend follows the file's
    normalizer spec; the Llama class would impose its own), saved as tokenizer.json."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as scratch:
        shutil.copyfile(model_file, Path(scratch) / "tokenizer.model")
        (Path(scratch) / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converted = AutoTokenizer.from_pretrained(scratch)
    backend = converted.backend_tokenizer
    if bos is not None:  # BOS in front of every encoding, as sentencepiece's add_bos (Llama's template)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B:1", special_tokens=[bos]
        )
    backend.save(str(tokenizer_json))


def _processor(model_file: Path) -> spm.SentencePieceProcessor:
    try:
        return spm.SentencePieceProcessor(model_file=str(model_file))
    except (OSError, RuntimeError) as exc:
        raise ConfigError(
            f"cannot read the sentencepiece model {model_file}: {exc}",
            where="export tokenizer",
            fix="pass the tokenizer's .model file",
        ) from None
