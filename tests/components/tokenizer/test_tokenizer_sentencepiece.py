"""The bundled sentencepiece tokenizer: InternLM's ids and behaviours, loading errors, pickling."""

from __future__ import annotations

import hashlib
import pickle
import shutil

import pytest

from internlm import paths, registry
from internlm.components.tokenizer.sentencepiece import SentencePieceConfig, SentencePieceTokenizer
from internlm.components.tokenizer.train import train_sentencepiece
from internlm.errors import ConfigError


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    return SentencePieceTokenizer(SentencePieceConfig())


def test_special_ids_are_internlms(tok):
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, None)
    assert [tok.id_to_token(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert tok.vocab_size == 4096


@pytest.mark.parametrize(
    "text",
    [
        "To be, or not to be: that is the question.",
        " leading space, two  spaces\nnew line\n\tand a tab",
        "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
        "Mixed 中文 and English, 1999 and 2023!",
        "emoji 🙂👍🏽 and rare 𠀀 ǅ",
    ],
)
def test_round_trip(tok, text):
    ids = tok.encode(text)
    assert tok.unk_id not in ids
    assert tok.decode(ids) == text


def test_no_dummy_prefix(tok):
    # InternLM does not prepend a space: "the" at the start is not "▁the".
    assert not tok.id_to_token(tok.encode("the king")[0]).startswith("▁")
    assert tok.id_to_token(tok.encode(" the")[0]).startswith("▁")


def test_digits_are_split(tok):
    assert [tok.id_to_token(i) for i in tok.encode("2023")] == ["2", "0", "2", "3"]


def test_unseen_characters_fall_back_to_utf8_bytes(tok):
    pieces = [tok.id_to_token(i) for i in tok.encode("🙂")]
    assert pieces == [f"<0x{b:02X}>" for b in "🙂".encode("utf-8")]


def test_bos_eos_flags(tok):
    body = tok.encode("Good night, sweet prince")
    assert tok.encode("Good night, sweet prince", bos=True, eos=True) == [1, *body, 2]


def test_encode_batch_equals_encode(tok):
    texts = ["Who's there?", "春眠不觉晓", "", "Nay, answer me 42"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, bos=True, eos=True) == [tok.encode(t, bos=True, eos=True) for t in texts]


def test_chat_markers_are_single_tokens(tok):
    special = tok.special_ids
    assert set(special) == {"<|User|>", "<|Bot|>", "<|System|>", "<eoh>", "<eoa>"}
    for marker, token_id in special.items():
        assert tok.encode(marker) == [token_id]
        assert tok.decode([token_id]) == marker


def test_token_to_id(tok):
    assert tok.token_to_id("<unk>") == 0
    assert tok.token_to_id("</s>") == 2
    assert tok.token_to_id("no such piece") is None


def test_identity_is_sha256_of_the_file(tok):
    assert tok.model_path == paths.BUNDLED_TOKENIZER
    assert tok.identity == hashlib.sha256(paths.BUNDLED_TOKENIZER.read_bytes()).hexdigest()


def test_registered_and_buildable():
    assert registry.get("tokenizer", "sentencepiece").cls is SentencePieceTokenizer
    built = registry.build(SentencePieceConfig(path=str(paths.BUNDLED_TOKENIZER)))
    assert built.encode("Exeunt.") == SentencePieceTokenizer(SentencePieceConfig()).encode("Exeunt.")


def test_pickle_reloads_from_the_path(tok):
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.identity == tok.identity
    assert clone.encode("O, woe is me") == tok.encode("O, woe is me")


def test_unpickling_after_the_file_changed_is_refused(tmp_path):
    path = tmp_path / "tok.model"
    shutil.copy(paths.BUNDLED_TOKENIZER, path)
    data = pickle.dumps(SentencePieceTokenizer(SentencePieceConfig(path=str(path))))
    other_corpus = ["The quick brown fox jumps over the lazy dog. " * 20 + "Pack my box with five dozen liquor jugs."]
    train_sentencepiece(other_corpus, path, vocab_size=380)  # a valid model, but another one
    with pytest.raises(ConfigError, match="changed"):
        pickle.loads(data)


def test_missing_model_names_the_path_and_the_fix(tmp_path):
    missing = tmp_path / "nope.model"
    with pytest.raises(ConfigError) as caught:
        SentencePieceTokenizer(SentencePieceConfig(path=str(missing)))
    message = str(caught.value)
    assert str(missing) in message and "tokenizer.path=" in message and "train_tokenizer" in message


@pytest.mark.parametrize("content", [b"", b"not a sentencepiece model" * 20])
def test_corrupt_model_is_a_config_error(tmp_path, content):
    corrupt = tmp_path / "bad.model"
    corrupt.write_bytes(content)
    with pytest.raises(ConfigError, match="not a sentencepiece model"):
        SentencePieceTokenizer(SentencePieceConfig(path=str(corrupt)))
