"""Raw text -> token store (`store_format.py`), on worker processes, resumable.

1. Plan: the input files are cut into shards of about ``shard_bytes`` of input, at line
   boundaries (JSONL) or whole files (text), with the first line number of every piece so errors
   can name file:line. The plan depends only on the inputs and the settings, so a rerun finds the
   same shards.
2. Work: each shard is read, tokenized (``[BOS] ids EOS`` per document) and written by one worker
   process, atomically; workers report bytes and tokens as they go, for the progress bar.
3. Commit: the parent records each finished shard in the manifest (atomic rewrite). A rerun
   skips recorded shards whose files are intact and redoes the rest.

Replacing a finished store (``task.overwrite=true``) writes the new one into ``.<name>.new`` beside
it and swaps it in only when complete, so bad input, an empty result or a kill never cost the
old store. Empty documents are skipped and counted whatever ``on_error`` says.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from internlm.components.data import store_format as fmt
from internlm.components.data.documents import (
    BadDocument,
    bad_document_error,
    is_jsonl,
    iter_jsonl,
    read_whole_file,
    text_parser,
)
from internlm.components.data.encoding import join_documents, token_dtype
from internlm.errors import ConfigError

log = logging.getLogger("internlm")
WHERE = "task.input"
ENCODE_CHUNK_CHARS = 1 << 20  # documents handed to the tokenizer at once (~1 MB of text)


@dataclass
class Piece:
    """Bytes [start, end) of one input file; ``first_line`` is the line number at ``start``."""

    file: str
    start: int
    end: int
    first_line: int


@dataclass
class Settings:
    text_field: str
    add_bos: bool
    max_chars: int
    on_error: str
    shard_bytes: int


@dataclass
class ShardJob:
    index: int
    pieces: list[Piece]
    store: str
    settings: Settings
    dtype: str


# ---------------------------------------------------------------- plan


def cut_file(path: Path, target: int) -> list[Piece]:
    """A JSONL file in pieces of about ``target`` bytes, each ending at a line end."""
    size = path.stat().st_size
    pieces, start, line = [], 0, 1
    with open(path, "rb") as handle:
        while start < size:
            end = size
            if start + target < size:
                handle.seek(start + target - 1)
                end = min(size, start + target - 1 + len(handle.readline()))
            pieces.append(Piece(str(path), start, end, line))
            line += count_newlines(handle, start, end)
            start = end
    return pieces


def count_newlines(handle, start: int, end: int, block: int = 1 << 24) -> int:
    handle.seek(start)
    count, left = 0, end - start
    while left > 0:
        chunk = handle.read(min(block, left))
        count += chunk.count(b"\n")
        left -= len(chunk)
    return count


def plan_shards(files: list[Path], shard_bytes: int) -> list[list[Piece]]:
    """Pieces grouped into shards of about ``shard_bytes`` (small files share a shard)."""
    shards: list[list[Piece]] = []
    current: list[Piece] = []
    filled = 0
    for path in files:
        size = path.stat().st_size
        pieces = cut_file(path, shard_bytes) if is_jsonl(path) else [Piece(str(path), 0, size, 1)]
        for piece in pieces:
            if current and filled + (piece.end - piece.start) > shard_bytes:
                shards.append(current)
                current, filled = [], 0
            current.append(piece)
            filled += piece.end - piece.start
    if current:
        shards.append(current)
    return shards


# ---------------------------------------------------------------- work (runs in the workers)

_TOKENIZER = None
_PROGRESS: tuple | None = None  # shared counters: (bytes read, tokens written)


def _init_worker(tokenizer, progress) -> None:
    global _TOKENIZER, _PROGRESS
    _TOKENIZER, _PROGRESS = tokenizer, progress


def _report(nbytes: int, ntokens: int) -> None:
    if _PROGRESS is not None:
        with _PROGRESS[0].get_lock():
            _PROGRESS[0].value += nbytes
        with _PROGRESS[1].get_lock():
            _PROGRESS[1].value += ntokens


def piece_documents(piece: Piece, settings: Settings):
    """(byte offset reached, document or BadDocument) over one piece."""
    path = Path(piece.file)
    if is_jsonl(path):
        parse = text_parser(settings.text_field, settings.max_chars)
        for _, offset, item in iter_jsonl(path, parse, start=piece.start, end=piece.end, first_line=piece.first_line):
            yield offset, item
    else:
        yield piece.end, read_whole_file(path, settings.max_chars)


def run_shard(job: ShardJob) -> dict:
    """Tokenize and write one shard; returns its manifest entry. Raises BadDocument (fail policy)."""
    settings, dtype = job.settings, np.dtype(job.dtype)
    bos = settings.add_bos and _TOKENIZER.bos_id is not None
    skipped: Counter[str] = Counter()
    examples: list[str] = []
    token_parts, length_parts = [], []
    pending: list[str] = []
    pending_chars = pending_bytes = 0

    def flush() -> None:
        nonlocal pending, pending_chars, pending_bytes
        new_tokens = 0
        if pending:
            encoded = _TOKENIZER.encode_batch(pending, bos=bos, eos=True, num_threads=1)
            tokens, starts = join_documents(encoded, dtype)
            token_parts.append(tokens)
            length_parts.append(np.diff(np.append(starts, len(tokens))))
            new_tokens = len(tokens)
        _report(pending_bytes, new_tokens)
        pending, pending_chars, pending_bytes = [], 0, 0

    for piece in job.pieces:
        reached = piece.start
        for offset, item in piece_documents(piece, settings):
            pending_bytes, reached = pending_bytes + offset - reached, offset
            if isinstance(item, BadDocument):
                if settings.on_error == "fail" and item.reason != "empty":  # empty ones carry nothing: counted
                    raise item
                skipped[item.reason] += 1
                if len(examples) < 5:
                    examples.append(f"{item.path}:{item.line} {item.reason}")
            else:
                pending.append(item)
                pending_chars += len(item)
                if pending_chars >= ENCODE_CHUNK_CHARS:
                    flush()
        pending_bytes += piece.end - reached  # blank lines after the last document
    flush()

    tokens = np.concatenate(token_parts) if token_parts else np.zeros(0, dtype=dtype)
    lengths = np.concatenate(length_parts) if length_parts else np.zeros(0, dtype=np.int64)
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    store, names = Path(job.store), fmt.shard_files(job.index)
    files = {
        "tokens": fmt.save_array_atomic(store / names["tokens"], tokens),
        "docs": fmt.save_array_atomic(store / names["docs"], starts),
    }
    return {
        "documents": int(len(lengths)),
        "tokens": int(len(tokens)),
        "input_bytes": sum(p.end - p.start for p in job.pieces),
        "skipped": dict(skipped),
        "skipped_examples": examples,
        "files": files,
    }


# ---------------------------------------------------------------- commit (the parent)


def write_store(
    files: list[Path],
    output: Path,
    tokenizer,
    settings: Settings,
    *,
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Prepare (or finish preparing) the store at ``output``; returns a summary.

    Replacing a finished store (``overwrite``) builds the new one in a sibling folder and swaps it
    in only once complete: bad input, an empty result or a kill leave the old store as it was."""
    started = time.perf_counter()
    if output.exists() and not output.is_dir():
        raise ConfigError(f"the output {output} is a file, not a folder", where="task.output", fix="name a folder (new or a token store)")
    files = [path.resolve() for path in files]  # the manifest must mean the same files from any directory
    empty_files = sum(1 for path in files if path.stat().st_size == 0)  # empty documents: skipped, counted
    files = [path for path in files if path.stat().st_size > 0]
    if not files:
        raise ConfigError(
            "the input holds no document to train on: every input file is empty", where=WHERE, fix="give files with text"
        )

    manifest = {
        "format": fmt.FORMAT,
        "version": fmt.VERSION,
        "complete": False,
        "tokenizer": fmt.tokenizer_record(tokenizer),
        "dtype": token_dtype(tokenizer.vocab_size).name,
        "settings": asdict(settings),
        "inputs": [{"file": str(p), "bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in files],
        "shards": {},
    }
    finish_interrupted_swap(output)
    build = _build_folder(output, manifest, overwrite)
    created = not build.exists()  # a refused run removes only what it made
    manifest = _adopt_existing(build, manifest)
    if "plan" not in manifest:
        manifest["plan"] = [[asdict(p) for p in pieces] for pieces in plan_shards(files, settings.shard_bytes)]
    fmt.write_manifest(build, manifest)

    def discard() -> None:  # what this run made and must not leave behind (an old store is never touched)
        if created or build != output:
            shutil.rmtree(build, ignore_errors=True)

    pending = [
        ShardJob(i, [Piece(**p) for p in pieces], str(build), settings, manifest["dtype"])
        for i, pieces in enumerate(manifest["plan"])
        if str(i) not in manifest["shards"]
    ]
    reused = len(manifest["plan"]) - len(pending)
    counters = (mp.Value("q", 0), mp.Value("q", 0))
    bar = _progress_bar(sum(p.end - p.start for job in pending for p in job.pieces), progress)

    def commit(job: ShardJob, entry: dict) -> None:
        manifest["shards"][str(job.index)] = entry
        fmt.write_manifest(build, manifest)

    try:
        _run_jobs(pending, tokenizer, counters, commit, workers, bar, started)
    except BadDocument as bad:
        discard()
        raise bad_document_error(bad, WHERE) from None
    except BrokenProcessPool:
        raise ConfigError(
            f"a prepare_data worker died (killed, or out of memory); {len(manifest['shards'])} of "
            f"{len(manifest['plan'])} shards are finished and kept",
            where="task.workers",
            fix="run the same command again to finish; fewer workers or a smaller task.shard_mb need less memory",
        ) from None
    finally:
        if bar is not None:
            bar.close()

    shards = [manifest["shards"][str(i)] for i in range(len(manifest["plan"]))]
    skipped = Counter()
    for entry in shards:
        skipped.update(entry["skipped"])
    if empty_files:
        skipped["empty"] += empty_files
    if sum(e["documents"] for e in shards) == 0:
        discard()
        raise ConfigError(
            f"the input holds no document to train on: every line was blank or skipped ({dict(skipped) or 'all blank'})",
            where=WHERE,
            fix=f"check the files, and that task.text_field (now '{settings.text_field}') names the text field "
            f"and task.max_chars (now {settings.max_chars}) is not below your documents' length",
        )
    manifest["complete"] = True
    manifest["totals"] = {
        "shards": len(shards),
        "documents": sum(e["documents"] for e in shards),
        "tokens": sum(e["tokens"] for e in shards),
        "skipped": dict(skipped),
    }
    fmt.write_manifest(build, manifest)
    if build != output:
        swap_in(build, output)
    seconds = time.perf_counter() - started
    new_tokens = counters[1].value
    return {
        "output": str(output),
        **manifest["totals"],
        "skipped_examples": [x for e in shards for x in e["skipped_examples"]][:10],
        "shards_reused": reused,
        "shards_written": len(pending),
        "seconds": round(seconds, 3),
        "tokens_per_second": round(new_tokens / seconds) if seconds > 0 else None,
    }


RECORDED = ("tokenizer", "dtype", "settings", "inputs")  # what makes two stores the same store


def _sibling(output: Path, role: str) -> Path:
    """``.<name>.new`` (a replacement being built) or ``.<name>.old`` (the store it replaces, mid-swap)."""
    return output.parent / f".{output.name}.{role}"


def _build_folder(output: Path, manifest: dict, overwrite: bool) -> Path:
    """Where to write: ``output`` itself (new, resumed, or an unfinished store of other inputs),
    or, replacing a finished store, a sibling that is swapped in when complete."""
    if not (output / fmt.MANIFEST).exists():
        return output
    old = fmt.read_manifest(output, "task.output")
    changed = [k for k in RECORDED if old.get(k) != manifest[k]]
    if not changed:
        shutil.rmtree(_sibling(output, "new"), ignore_errors=True)  # a replacement given up on
        return output
    if not old.get("complete"):
        log.warning("%s held an unfinished store of other %s: starting it again", output, " and ".join(changed))
        for stale in [*output.glob("shard-*.npy"), output / fmt.MANIFEST]:
            stale.unlink()
        return output
    if not overwrite:
        raise ConfigError(
            f"{output} holds a finished store made with other {' and '.join(changed)}",
            where="task.output",
            fix="choose a new output folder, or set task.overwrite=true to replace it (the old store is kept until the new one is complete)",
        )
    return _sibling(output, "new")


def _adopt_existing(folder: Path, manifest: dict) -> dict:
    """Continue a store begun in ``folder`` with the same inputs and settings, or start afresh
    (``_build_folder`` has refused what must not be replaced)."""
    if folder.exists() and not (folder / fmt.MANIFEST).exists():
        strangers = [p.name for p in folder.iterdir() if not p.name.startswith((".", "shard-"))]
        if strangers:
            raise ConfigError(
                f"output folder {folder} is not empty and holds no token store ({', '.join(sorted(strangers)[:3])})",
                where="task.output",
                fix="choose an empty or new folder",
            )
    folder.mkdir(parents=True, exist_ok=True)
    for leftover in folder.glob(".*.tmp-*"):  # files a killed run was writing: never part of the store
        leftover.unlink(missing_ok=True)
    path = folder / fmt.MANIFEST
    if not path.exists():
        return manifest
    old = fmt.read_manifest(folder, "task.output")
    if all(old.get(k) == manifest[k] for k in RECORDED):
        old["shards"] = {k: v for k, v in old["shards"].items() if fmt.shard_is_intact(folder, v)}
        old["complete"] = old["complete"] and len(old["shards"]) == len(old["plan"])
        return old
    for stale in [*folder.glob("shard-*.npy"), path]:  # a replacement begun with other inputs
        stale.unlink()
    return manifest


def swap_in(new: Path, output: Path) -> None:
    """Replace ``output`` by the complete store in ``new``: two renames (the old store moves aside
    first and is removed last), so that at every moment one whole store can be found;
    `finish_interrupted_swap` completes a swap cut between them."""
    old = _sibling(output, "old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(output, old)
    os.replace(new, output)
    _fsync_dir(output.parent)
    shutil.rmtree(old, ignore_errors=True)


def finish_interrupted_swap(output: Path) -> None:
    old, new = _sibling(output, "old"), _sibling(output, "new")
    if not old.exists():
        return
    if not output.exists():
        complete = (new / fmt.MANIFEST).exists() and fmt.read_manifest(new, "task.output").get("complete")
        os.replace(new if complete else old, output)
        log.warning("finished an interrupted replacement of %s (%s store kept)", output, "new" if complete else "old")
    shutil.rmtree(old, ignore_errors=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _run_jobs(jobs: list[ShardJob], tokenizer, counters, commit, workers: int, bar, started: float) -> None:
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers <= 1:
        _init_worker(tokenizer, counters)
        try:
            for job in jobs:
                commit(job, run_shard(job))
                _update_bar(bar, counters, started)
        finally:
            _init_worker(None, None)
        return
    # fork: workers inherit the loaded tokenizer and imports (spawn would re-import everything).
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(tokenizer, counters))
    try:
        running = {pool.submit(run_shard, job): job for job in jobs}
        while running:
            done, _ = wait(running, timeout=0.2, return_when=FIRST_COMPLETED)
            for future in done:
                # re-raises a worker's error here; a worker killed outright raises BrokenProcessPool
                commit(running.pop(future), future.result())
            _update_bar(bar, counters, started)
    finally:
        # Let shards already in flight finish (one each): no worker may still be writing into the
        # store once this returns, e.g. while a rerun cleans up.
        pool.shutdown(wait=True, cancel_futures=True)


def _progress_bar(total_bytes: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(
        total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="prepare_data", dynamic_ncols=True
    )


def _update_bar(bar, counters, started: float) -> None:
    if bar is None:
        return
    bar.n = min(counters[0].value, bar.total)
    elapsed = max(time.perf_counter() - started, 1e-9)
    bar.set_postfix_str(f"{counters[1].value / elapsed / 1e3:,.0f}k tok/s, {counters[1].value:,} tokens", refresh=False)
    bar.refresh()
