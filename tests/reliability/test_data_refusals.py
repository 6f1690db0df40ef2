"""Empty success is refused: input of only blank lines, or whose every line is skipped, ends in one
message naming the fields to check, and leaves no half-made store behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "components" / "data"))
from datahelpers import train_tokenizer  # noqa: E402

from internlm.errors import ConfigError  # noqa: E402
from internlm.tasks.prepare_data import PrepareDataConfig, prepare_data  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "small.model", 400)


def _prepare(path, output, tokenizer, **fields):
    return prepare_data(PrepareDataConfig(input=[str(path)], output=str(output), progress=False, workers=1, **fields), tokenizer)


def test_blank_lines_only_are_refused_and_no_store_is_left(tmp_path, tokenizer):
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n\n")
    with pytest.raises(ConfigError) as info:
        _prepare(blank, tmp_path / "store", tokenizer, on_error="skip")
    assert "no document" in info.value.render()
    assert not (tmp_path / "store").exists()


def test_every_line_skipped_names_the_text_field(tmp_path, tokenizer):
    data = tmp_path / "wrong_field.jsonl"
    data.write_text("".join(json.dumps({"content": f"document {i}"}) + "\n" for i in range(5)))
    with pytest.raises(ConfigError) as info:
        _prepare(data, tmp_path / "store", tokenizer, on_error="skip")
    message = info.value.render()
    assert "no document" in message and "task.text_field" in message and "'text'" in message and "missing_field" in message
    assert not (tmp_path / "store").exists()


def test_a_missing_field_or_too_long_document_names_the_field_to_set(tmp_path, tokenizer):
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"content": "the king"}) + "\n")
    with pytest.raises(ConfigError) as info:
        _prepare(data, tmp_path / "store", tokenizer)
    assert "d.jsonl:1" in info.value.render() and "task.text_field" in info.value.fix
    data.write_text(json.dumps({"text": "the king " * 20}) + "\n")
    with pytest.raises(ConfigError) as info:
        _prepare(data, tmp_path / "store", tokenizer, max_chars=50)
    assert "task.max_chars" in info.value.fix


def test_a_tokenizer_that_cannot_be_trained_names_this_tasks_fields(tmp_path):
    from internlm.api import run

    data = tmp_path / "few.txt"
    data.write_text("the king and the queen\n" * 5)
    with pytest.raises(ConfigError) as info:
        run(["task=train_tokenizer", f"task.input=[{data}]", "task.vocab_size=60000"], tmp_path / "run")
    assert info.value.where == "task.vocab_size"
    assert "task.character_coverage" in info.value.fix and "set task.vocab_size" in info.value.fix
