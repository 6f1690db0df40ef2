"""Training a tokenizer: InternLM's settings, determinism, file inputs, atomic output, errors."""

from __future__ import annotations

import json

import pytest

from internlm import paths
from internlm.components.tokenizer.sentencepiece import SentencePieceConfig, SentencePieceTokenizer
from internlm.components.tokenizer.train import train_sentencepiece
from internlm.errors import ConfigError

VOCAB = 520


@pytest.fixture(scope="module")
def texts() -> list[str]:
    """About 6.5 KB: one scene's start and two poems from the bundled corpus."""
    with (paths.CORPUS_DIR / "shakespeare.jsonl").open(encoding="utf-8") as file:
        scene = json.loads(file.readlines()[1])["text"][:6000]
    with (paths.CORPUS_DIR / "tang_song.jsonl").open(encoding="utf-8") as file:
        poems = [json.loads(line)["text"] for line in file.readlines()[:2]]
    return [scene, *poems]


def load(path) -> SentencePieceTokenizer:
    return SentencePieceTokenizer(SentencePieceConfig(path=str(path)))


def test_same_input_same_file(tmp_path, texts):
    first = train_sentencepiece(texts, tmp_path / "a.model", VOCAB)
    second = train_sentencepiece(list(texts), tmp_path / "b.model", VOCAB)
    assert first.read_bytes() == second.read_bytes()
    assert first.stat().st_mode & 0o044 == 0o044  # readable by others, like any installed asset
    other = train_sentencepiece(texts[:1], tmp_path / "c.model", VOCAB - 100)
    assert other.read_bytes() != first.read_bytes()


def test_internlm_settings(tmp_path, texts):
    tok = load(train_sentencepiece(texts, tmp_path / "t.model", VOCAB))
    assert tok.vocab_size == VOCAB
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, None)
    assert list(tok.special_ids.values()) == [3, 4, 5, 6, 7]  # the chat markers, right after the specials
    # byte fallback: all 256 byte pieces exist, so nothing is ever unknown
    assert all(tok.token_to_id(f"<0x{b:02X}>") is not None for b in range(256))
    assert tok.encode("ǅ") == [tok.token_to_id(f"<0x{b:02X}>") for b in "ǅ".encode()]
    # digits one per token, every printable ASCII character a piece even if unseen ("~" is not in texts)
    assert [tok.id_to_token(i) for i in tok.encode("1601~")] == ["1", "6", "0", "1", "~"]
    # no dummy prefix; whitespace kept exactly
    assert not tok.id_to_token(tok.encode("Hamlet")[0]).startswith("▁")
    text = "Ber.\n\tWho's  there?\n  明月"
    assert tok.decode(tok.encode(text)) == text


def test_files_train_like_strings(tmp_path, texts):
    plain = tmp_path / "scene.txt"
    plain.write_text(texts[0], encoding="utf-8")
    jsonl = tmp_path / "poems.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts[1:]), encoding="utf-8")
    from_files = train_sentencepiece([plain, jsonl], tmp_path / "files.model", VOCAB)
    from_strings = train_sentencepiece(texts, tmp_path / "strings.model", VOCAB)
    assert from_files.read_bytes() == from_strings.read_bytes()


def test_failed_training_leaves_the_old_file_and_no_debris(tmp_path, texts):
    output = tmp_path / "tok.model"
    output.write_bytes(b"previous model")
    with pytest.raises(ConfigError, match="cannot make 100000 pieces"):
        train_sentencepiece(texts, output, 100_000)
    assert output.read_bytes() == b"previous model"
    assert [p.name for p in tmp_path.iterdir()] == ["tok.model"]


def test_too_small_vocabulary_is_explained(tmp_path, texts):
    with pytest.raises(ConfigError) as caught:
        train_sentencepiece(texts, tmp_path / "t.model", 300)
    assert "vocab_size" in caught.value.fix


def test_no_text_and_bad_jsonl_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no text"):
        train_sentencepiece(["", "   \n"], tmp_path / "t.model", 400)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"content": "wrong key"}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        train_sentencepiece([bad], tmp_path / "t.model", 400)
    assert caught.value.where == f"{bad}:2"
    with pytest.raises(ConfigError, match="not found"):
        train_sentencepiece([tmp_path / "missing.txt"], tmp_path / "t.model", 400)
