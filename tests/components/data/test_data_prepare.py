"""prepare_data: the token store, its resume after a kill, and the bad-input policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datahelpers import failing_run_shard, random_documents, write_jsonl

from internlm.components.data import store_format as fmt
from internlm.components.data import store_writer
from internlm.errors import ConfigError
from internlm.tasks.prepare_data import PrepareDataConfig, prepare_data


def config(inputs, output, **fields) -> PrepareDataConfig:
    return PrepareDataConfig(input=[str(i) for i in inputs], output=str(output), progress=False, **fields)


def corpus(tmp_path, files=3, docs=150):
    return [write_jsonl(tmp_path / f"part{i}.jsonl", random_documents(docs, seed=i)) for i in range(files)]


def shard_contents(store) -> list[tuple[list[int], list[int]]]:
    manifest = fmt.read_manifest(store, "test")
    out = []
    for i in range(len(manifest["plan"])):
        names = fmt.shard_files(i)
        out.append((np.load(store / names["tokens"]).tolist(), np.load(store / names["docs"]).tolist()))
    return out


def test_store_holds_exactly_the_tokenized_documents(tmp_path, tokenizer):
    files = corpus(tmp_path, files=2, docs=40)
    summary = prepare_data(config(files, tmp_path / "store", shard_mb=0.002, workers=1), tokenizer)
    docs = [json.loads(line)["text"] for f in files for line in f.read_text().splitlines()]
    expected = [[tokenizer.bos_id] + tokenizer.encode(d) + [tokenizer.eos_id] for d in docs]
    got_tokens, got_docs = [], []
    for tokens, starts in shard_contents(tmp_path / "store"):
        bounds = starts + [len(tokens)]
        got_docs += [tokens[a:b] for a, b in zip(bounds, bounds[1:])]
    assert got_docs == expected
    assert summary["documents"] == 80 and summary["tokens"] == sum(map(len, expected))
    assert summary["shards"] > 2  # small shards: files were cut at line boundaries
    manifest = fmt.read_manifest(tmp_path / "store", "test")
    assert manifest["complete"] and manifest["tokenizer"]["identity"] == tokenizer.identity
    assert manifest["dtype"] == "uint16"
    for entry in manifest["shards"].values():
        for record in entry["files"].values():
            assert fmt.sha256_file(tmp_path / "store" / record["name"]) == record["sha256"]


def test_workers_give_the_same_store_as_one_process(tmp_path, tokenizer):
    files = corpus(tmp_path)
    prepare_data(config(files, tmp_path / "one", shard_mb=0.005, workers=1), tokenizer)
    prepare_data(config(files, tmp_path / "two", shard_mb=0.005, workers=2), tokenizer)
    assert shard_contents(tmp_path / "one") == shard_contents(tmp_path / "two")


@pytest.mark.parametrize("workers", [1, 2])
def test_resume_after_a_kill_equals_a_clean_run(tmp_path, tokenizer, monkeypatch, workers):
    files = corpus(tmp_path)
    clean = tmp_path / "clean"
    prepare_data(config(files, clean, shard_mb=0.005, workers=workers), tokenizer)

    killed = tmp_path / "killed"
    monkeypatch.setattr(store_writer, "REAL_RUN_SHARD", store_writer.run_shard, raising=False)
    monkeypatch.setattr(store_writer, "run_shard", failing_run_shard)
    monkeypatch.setenv("INTERNLM_TEST_FAIL_SHARDS", "3")
    with pytest.raises(RuntimeError, match="simulated kill"):
        prepare_data(config(files, killed, shard_mb=0.005, workers=workers), tokenizer)
    half = fmt.read_manifest(killed, "test")
    assert not half["complete"] and "3" not in half["shards"]
    with pytest.raises(ConfigError, match="unfinished"):
        open_store_rows(killed, tokenizer)

    monkeypatch.setenv("INTERNLM_TEST_FAIL_SHARDS", "")
    summary = prepare_data(config(files, killed, shard_mb=0.005, workers=workers), tokenizer)
    assert summary["shards_reused"] == len(half["shards"]) and summary["shards_written"] > 0
    assert shard_contents(killed) == shard_contents(clean)
    done, reference = fmt.read_manifest(killed, "t"), fmt.read_manifest(clean, "t")
    assert done["shards"] == reference["shards"] and done["totals"] == reference["totals"]


def test_written_but_uncommitted_or_damaged_shards_are_redone(tmp_path, tokenizer):
    files = corpus(tmp_path, files=1)
    store = tmp_path / "store"
    prepare_data(config(files, store, shard_mb=0.005, workers=1), tokenizer)
    reference = shard_contents(store)
    manifest = fmt.read_manifest(store, "t")
    # a kill between writing shard 1's files and committing it, and a truncated shard 2
    del manifest["shards"]["1"]
    manifest["complete"] = False
    fmt.write_manifest(store, manifest)
    (store / fmt.shard_files(1)["tokens"]).write_bytes(b"garbage")
    tokens2 = store / fmt.shard_files(2)["tokens"]
    tokens2.write_bytes(tokens2.read_bytes()[:-4])
    summary = prepare_data(config(files, store, shard_mb=0.005, workers=1), tokenizer)
    assert summary["shards_written"] == 2
    assert shard_contents(store) == reference


def test_other_inputs_into_the_same_store_are_refused(tmp_path, tokenizer):
    files = corpus(tmp_path, files=1)
    prepare_data(config(files, tmp_path / "store", workers=1), tokenizer)
    with pytest.raises(ConfigError, match="other settings"):
        prepare_data(config(files, tmp_path / "store", workers=1, text_field="body"), tokenizer)
    summary = prepare_data(config(files, tmp_path / "store", workers=1, add_bos=False, overwrite=True), tokenizer)
    assert summary["shards_written"] == summary["shards"]


BAD_LINES = {
    "malformed_json": b'{"text": "the king',
    "missing_field": b'{"body": "the king"}',
    "invalid_utf8": b'{"text": "the \xff king"}',
    "empty": b'{"text": "   "}',
    "too_long": b'{"text": "' + b"moon " * 30 + b'"}',
}


def bad_corpus(tmp_path):
    good = [json.dumps({"text": d}).encode() for d in random_documents(12, max_words=8)]
    lines = (
        good[:2] + [BAD_LINES["malformed_json"]] + good[2:5] + [BAD_LINES["missing_field"], BAD_LINES["invalid_utf8"]]
    )
    lines += good[5:] + [BAD_LINES["empty"], BAD_LINES["too_long"], BAD_LINES["malformed_json"]]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.mark.parametrize("reason", sorted(set(BAD_LINES) - {"empty"}))
def test_fail_names_the_file_line_and_reason(tmp_path, tokenizer, reason):
    good = [json.dumps({"text": d}).encode() for d in random_documents(6, max_words=8)]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\n".join(good[:4] + [b""] + [BAD_LINES[reason]] + good[4:]) + b"\n")  # line 6, after a blank
    with pytest.raises(ConfigError, match=rf"bad\.jsonl:6: {reason}") as err:
        prepare_data(config([path], tmp_path / "store", workers=1, max_chars=100), tokenizer)
    assert "task.on_error=skip" in err.value.fix
    assert not (tmp_path / "store" / fmt.shard_files(0)["tokens"]).exists()


def test_empty_documents_and_files_are_skipped_and_counted_even_under_fail(tmp_path, tokenizer):
    good = [json.dumps({"text": d}).encode() for d in random_documents(4, max_words=8)]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(good[:2] + [BAD_LINES["empty"], b'{"text": ""}'] + good[2:]) + b"\n")
    (tmp_path / "b.txt").write_bytes(b"")
    (tmp_path / "c.txt").write_bytes(b" \n\t\n")
    summary = prepare_data(config([tmp_path / "a.jsonl", tmp_path / "b.txt", tmp_path / "c.txt"], tmp_path / "store", workers=1), tokenizer)
    assert summary["documents"] == 4 and summary["skipped"] == {"empty": 4}
    assert fmt.read_manifest(tmp_path / "store", "test")["totals"]["skipped"] == {"empty": 4}


def test_skip_counts_every_reason(tmp_path, tokenizer):
    path = bad_corpus(tmp_path)
    summary = prepare_data(config([path], tmp_path / "store", workers=1, max_chars=100, on_error="skip"), tokenizer)
    assert summary["skipped"] == {"malformed_json": 2, "missing_field": 1, "invalid_utf8": 1, "empty": 1, "too_long": 1}
    assert summary["documents"] == 12
    assert any("bad.jsonl:3 malformed_json" in e for e in summary["skipped_examples"])


def test_empty_and_missing_inputs(tmp_path, tokenizer):
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(ConfigError, match="empty"):
        prepare_data(config([tmp_path / "empty.jsonl"], tmp_path / "store", workers=1), tokenizer)
    with pytest.raises(ConfigError, match="not found"):
        prepare_data(config([tmp_path / "nope.jsonl"], tmp_path / "store", workers=1), tokenizer)


def open_store_rows(store, tokenizer):
    from internlm.components.data.store import open_store

    return open_store(store, tokenizer, 16, "data.path")


def test_fail_from_a_worker_process_names_the_line(tmp_path, tokenizer):
    lines = [json.dumps({"text": d}).encode() for d in random_documents(200, seed=3)]
    lines[150] = BAD_LINES["invalid_utf8"]
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(ConfigError, match=r"big\.jsonl:151: invalid_utf8"):
        prepare_data(config([path], tmp_path / "store", workers=2, shard_mb=0.003), tokenizer)


def test_text_files_are_whole_documents(tmp_path, tokenizer):
    (tmp_path / "a.txt").write_text("the king\nthe queen\n", encoding="utf-8")
    (tmp_path / "b.txt").write_bytes(b"moon\nriver \xfe\n")
    with pytest.raises(ConfigError, match=r"b\.txt:2: invalid_utf8"):
        prepare_data(config([tmp_path / "*.txt"], tmp_path / "store", workers=1), tokenizer)
    summary = prepare_data(config([tmp_path / "*.txt"], tmp_path / "s2", workers=1, on_error="skip"), tokenizer)
    assert summary["documents"] == 1 and summary["skipped"] == {"invalid_utf8": 1}
    assert shard_contents(tmp_path / "s2")[0][0] == [tokenizer.bos_id] + tokenizer.encode("the king\nthe queen\n") + [
        tokenizer.eos_id
    ]


def test_rerun_of_a_finished_store_changes_nothing(tmp_path, tokenizer):
    files = corpus(tmp_path, files=1)
    store = tmp_path / "store"
    prepare_data(config(files, store, shard_mb=0.005, workers=1), tokenizer)
    (store / ".shard-00000.tokens.npy.tmp-999").write_bytes(b"half")  # left by a killed worker
    before = {p.name: p.stat().st_mtime_ns for p in store.glob("shard-*")}
    summary = prepare_data(config(files, store, shard_mb=0.005, workers=1), tokenizer)
    assert summary["shards_written"] == 0 and summary["shards_reused"] == summary["shards"]
    assert {p.name: p.stat().st_mtime_ns for p in store.glob("shard-*")} == before
    assert not list(store.glob(".*.tmp-*"))
