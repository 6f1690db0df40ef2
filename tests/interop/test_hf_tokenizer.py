"""The exported tokenizer encodes like sentencepiece, and its chat template like our chat format."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import sentencepiece as spm
from transformers import AutoTokenizer

from interop_helpers import random_model, tiny_config
from internlm.components.tokenizer.chat_template import encode_chat, render_chat
from internlm.components.tokenizer.sentencepiece import SentencePieceConfig, SentencePieceTokenizer
from internlm.interop import export_hf
from internlm.interop.hf_tokenizer import write_hf_tokenizer

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "  Leading spaces, trailing space and  double  gaps ",
    "中文分词测试：今天天气很好，我们去公园散步吧。",
    "Digits 1234567890 and 3.1415926, phone 010-88886666.",
    "Mixed: 你好 world 123 🙂 ½ tabs\tand\nnewlines\n",
]

CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "用中文再说一遍"},
    {"role": "assistant", "content": "法国的首都是巴黎。"},
    {"role": "user", "content": "How many letters are in 12345 words"},
    {"role": "assistant", "content": "That depends on the words"},
]


def mistral_tokenizer() -> Path | None:
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "tokenizer.model.v1"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tokenizer_model) -> Path:
    config = tiny_config()
    out = tmp_path_factory.mktemp("export") / "hf"
    return export_hf(random_model(config).state_dict(), config, out, tokenizer_model=tokenizer_model)


def test_exported_tokenizer_gives_sentencepiece_ids(exported, tokenizer_model):
    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    hf = AutoTokenizer.from_pretrained(exported)  # no trust_remote_code
    for text in TEXTS:
        expected = [sp.bos_id()] + sp.encode(text)
        assert hf(text)["input_ids"] == expected, text
        assert hf.decode(expected, skip_special_tokens=True) == sp.decode(expected), text


def test_chat_template_renders_a_three_turn_chat_to_our_ids(exported, tokenizer_model):
    ours = SentencePieceTokenizer(SentencePieceConfig(path=str(tokenizer_model)))
    hf = AutoTokenizer.from_pretrained(exported)
    for messages, prompt in ((CHAT, False), (CHAT[:5], True)):
        text = hf.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=False)
        assert text == "<s>" + render_chat(messages, add_generation_prompt=prompt)
        ids = hf.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=True)["input_ids"]
        expected, _ = encode_chat(ours, messages, add_generation_prompt=prompt)
        assert ids == expected
        assert ids == [ours.bos_id] + ours.encode(render_chat(messages, add_generation_prompt=prompt))
        assert ids.count(ours.bos_id) == 1


def test_the_real_32k_llama_style_tokenizer_with_dummy_prefix(tmp_path):
    """mistral-common's tokenizer.model.v1: a real pretrained vocabulary, with sentencepiece's dummy prefix."""
    model = mistral_tokenizer()
    if model is None:
        pytest.skip("mistral-common is not installed (pip install --no-deps mistral-common)")
    write_hf_tokenizer(model, tmp_path, chat_template=None, model_max_length=4096)
    sp = spm.SentencePieceProcessor(model_file=str(model))
    hf = AutoTokenizer.from_pretrained(tmp_path)
    for text in TEXTS:
        assert hf(text)["input_ids"] == [sp.bos_id()] + sp.encode(text), text
