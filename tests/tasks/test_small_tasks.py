"""task=generate and task=train_tokenizer through the same entry as the CLI."""

from __future__ import annotations

import sentencepiece as spm

import internlm
from internlm.api import run
from internlm.runtime.generation import generate


def test_generate_task_prints_the_greedy_continuation(tmp_path, fast_overrides, capsys):
    run(fast_overrides + ["trainer.max_steps=3"], tmp_path / "train")
    text = run(["task=generate", f"checkpoint={tmp_path / 'train'}", "task.prompt=O Romeo", "task.max_new_tokens=12"], tmp_path / "gen")
    model, tokenizer = internlm.load(tmp_path / "train")
    expected = tokenizer.decode(generate(model, tokenizer.encode("O Romeo", bos=True), 12, stop_ids=(tokenizer.eos_id,)))
    assert text == expected
    assert "O Romeo" + expected in capsys.readouterr().out


def test_train_tokenizer_task_writes_a_working_model(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i}: the quick brown fox {i * 7} jumps over the lazy dog number {i}" for i in range(2000)))
    out = run(["task=train_tokenizer", f"task.input=[{corpus}]", "task.vocab_size=420"], tmp_path / "run")
    processor = spm.SentencePieceProcessor(model_file=str(out))
    assert processor.vocab_size() == 420
    ids = processor.encode("the lazy dog 42")
    assert processor.decode(ids) == "the lazy dog 42"
