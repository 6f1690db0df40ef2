"""task.overwrite=true never costs the good store: the new one is built beside it and swapped in
only when complete. Bad, empty or truncated input, and a kill -9 mid-write, leave the old store
byte for byte as it was; a swap cut between its two renames is finished by the next run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "components" / "data"))
from datahelpers import random_documents, train_tokenizer, write_jsonl  # noqa: E402

from internlm.components.data import store_format as fmt  # noqa: E402
from internlm.components.data import store_writer  # noqa: E402
from internlm.components.data.store import open_store  # noqa: E402
from internlm.errors import ConfigError  # noqa: E402
from internlm.tasks.prepare_data import PrepareDataConfig, prepare_data  # noqa: E402


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return train_tokenizer(tmp_path_factory.mktemp("tok") / "small.model", 400)


def _prepare(inputs, store, tokenizer, **fields):
    config = PrepareDataConfig(input=[str(i) for i in inputs], output=str(store), progress=False, workers=1, **fields)
    return prepare_data(config, tokenizer)


def _snapshot(store: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(store.iterdir())}


@pytest.fixture
def good_store(tmp_path, tokenizer):
    store = tmp_path / "store"
    _prepare([write_jsonl(tmp_path / "old.jsonl", random_documents(30, seed=1))], store, tokenizer, shard_mb=0.001)
    return store


def _no_leftovers(store: Path) -> bool:
    return not any(p.name.startswith(f".{store.name}.") for p in store.parent.iterdir())


BAD_INPUTS = {
    "truncated": b'{"text": "the king"}\n{"text": "the que',
    "binary": bytes(range(256)) * 8,
    "empty": b"",
    "blank": b"\n  \n\n",
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_a_bad_replacement_input_leaves_the_old_store_intact(tmp_path, tokenizer, good_store, kind):
    before = _snapshot(good_store)
    new = tmp_path / f"new_{kind}.jsonl"
    new.write_bytes(BAD_INPUTS[kind])
    with pytest.raises(ConfigError):
        _prepare([new], good_store, tokenizer, shard_mb=0.001, overwrite=True)
    assert _snapshot(good_store) == before
    assert _no_leftovers(good_store)
    assert len(open_store(good_store, tokenizer, 8, "data.path")) > 0


def test_without_overwrite_a_finished_store_of_other_inputs_is_refused(tmp_path, tokenizer, good_store):
    new = write_jsonl(tmp_path / "new.jsonl", random_documents(10, seed=2))
    with pytest.raises(ConfigError, match="task.overwrite=true"):
        _prepare([new], good_store, tokenizer, shard_mb=0.001)


def test_a_good_replacement_is_swapped_in_whole(tmp_path, tokenizer, good_store):
    new = write_jsonl(tmp_path / "new.jsonl", random_documents(10, seed=2))
    summary = _prepare([new], good_store, tokenizer, shard_mb=0.001, overwrite=True)
    manifest = fmt.read_manifest(good_store, "test")
    assert manifest["complete"] and [i["file"] for i in manifest["inputs"]] == [str(new.resolve())]
    assert summary["documents"] == 10 and summary["output"] == str(good_store)
    assert sorted(p.name for p in good_store.glob("shard-*")) == sorted(
        r["name"] for e in manifest["shards"].values() for r in e["files"].values()
    )  # no shard of the old store is left in the new one
    assert _no_leftovers(good_store)


def test_after_removing_the_bad_line_the_same_command_runs(tmp_path, tokenizer):
    data = tmp_path / "data.jsonl"
    data.write_text('{"text": "the king"}\n{"text": "the queen\n{"text": "the moon"}\n')
    with pytest.raises(ConfigError, match=r"data\.jsonl:2: malformed_json"):
        _prepare([data], tmp_path / "store", tokenizer)
    assert not (tmp_path / "store").exists()  # the refused run made it: removed
    data.write_text('{"text": "the king"}\n{"text": "the moon"}\n')
    assert _prepare([data], tmp_path / "store", tokenizer)["documents"] == 2


@pytest.mark.parametrize("new_is_complete", [False, True])
def test_a_swap_cut_between_its_renames_is_finished_by_the_next_run(tmp_path, tokenizer, good_store, new_is_complete):
    before = _snapshot(good_store)
    new = write_jsonl(tmp_path / "new.jsonl", random_documents(10, seed=2))
    replacement = tmp_path / ".store.new"
    _prepare([new], replacement, tokenizer, shard_mb=0.001)
    if not new_is_complete:
        manifest = fmt.read_manifest(replacement, "test")
        fmt.write_manifest(replacement, {**manifest, "complete": False})
    replaced = _snapshot(replacement)
    os.replace(good_store, tmp_path / ".store.old")  # the first rename happened, the second did not
    store_writer.finish_interrupted_swap(good_store)
    assert _snapshot(good_store) == (replaced if new_is_complete else before)
    assert not (tmp_path / ".store.old").exists()


KILLED_PREPARE = """
import sys, time
from internlm.components.data import store_writer
from internlm.components.tokenizer.sentencepiece import SentencePieceConfig, SentencePieceTokenizer
from internlm.tasks.prepare_data import PrepareDataConfig, prepare_data
real_run_shard = store_writer.run_shard
def slow_run_shard(job):  # a slow disk: the kill lands while shards are still being written
    time.sleep(0.1)
    return real_run_shard(job)
store_writer.run_shard = slow_run_shard
tokenizer = SentencePieceTokenizer(SentencePieceConfig(path=sys.argv[1]))
prepare_data(PrepareDataConfig(input=[sys.argv[2]], output=sys.argv[3], progress=False, workers=1,
                               shard_mb=0.002, overwrite=True), tokenizer)
"""


def test_kill_9_while_the_replacement_is_written_leaves_the_old_store_and_a_rerun_finishes(tmp_path, tokenizer, good_store):
    before = _snapshot(good_store)
    new = write_jsonl(tmp_path / "new.jsonl", random_documents(400, seed=4))  # ~60 shards of 2 kB
    command = [sys.executable, "-c", KILLED_PREPARE, tokenizer.config.path, str(new), str(good_store)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE)
    building = tmp_path / ".store.new" / fmt.MANIFEST
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if building.exists() and len(json.loads(building.read_text() or "{}").get("shards", {})) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]  # still writing: kill it there
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _snapshot(good_store) == before  # the old store, untouched
    assert len(open_store(good_store, tokenizer, 8, "data.path")) > 0
    summary = _prepare([new], good_store, tokenizer, shard_mb=0.002, overwrite=True)  # resumes the replacement
    assert summary["shards_reused"] >= 3 and summary["documents"] == 400
    assert _no_leftovers(good_store)
