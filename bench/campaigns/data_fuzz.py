"""Data fuzzing: generated bad input files (malformed JSONL, bad UTF-8, binary files, huge lines,
wrong field types), each given to `task=prepare_data` and to `data=text`.

Every one must be refused with one message naming the file and line (`ConfigError`, which the CLI
prints as one `error:` line with exit code 2), never another exception, and nothing written: no
store folder is left. A sample also runs through the real command line (`--cli N`).

    .venv/bin/python -m bench.campaigns.data_fuzz --count 200 --cli 10 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from bench.campaigns.config_fuzz import refusal_problems

WORDS = "the king queen love night day sword crown river moon 春 花 月 夜 山 水".split()
HUGE_CHARS = 10_000_001  # one over prepare_data's default task.max_chars


@dataclass
class Case:
    kind: str
    name: str  # the file's name (its suffix picks the reader)
    data: bytes
    line: int  # the line the message must name (1-based)


def good_line(rng: random.Random) -> bytes:
    text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 12)))
    return json.dumps({"text": text}, ensure_ascii=rng.random() < 0.5).encode()


def bad_jsonl_line(rng: random.Random, kind: str) -> bytes:
    good = good_line(rng)
    if kind == "truncated_json":
        return good[: rng.randint(1, len(good) - 2)]
    if kind == "trailing_garbage":
        return good + rng.choice([b"}", b",", b" x", b'{"text": "a"}'])
    if kind == "not_an_object":
        return rng.choice([b"[1, 2]", b"42", b'"just a string"', b"null", b"true"])
    if kind == "wrong_field_type":
        return json.dumps({"text": rng.choice([1, 2.5, None, ["a"], {"a": 1}, True])}).encode()
    if kind == "missing_field":
        return json.dumps({rng.choice(["body", "content", "Text"]): "the king"}).encode()
    if kind == "bad_utf8":
        cut = rng.randint(10, len(good) - 2)
        bad = rng.choice([b"\xff", b"\xc3", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xe2\x82"])
        return good[:cut] + bad + good[cut:]
    if kind == "nul_bytes":
        return good[:5] + b"\x00" * rng.randint(1, 8) + good[5:]
    if kind == "huge_line":
        return b'{"text": "' + b"a" * HUGE_CHARS + b'"}'
    raise ValueError(kind)


LINE_KINDS = ["truncated_json", "trailing_garbage", "not_an_object", "wrong_field_type", "missing_field", "bad_utf8", "nul_bytes"]


def generate(count: int, seed: int, huge: bool = True) -> list[Case]:
    rng = random.Random(seed)
    cases = []
    for index in range(count):
        roll = rng.random()
        if roll < 0.15:  # a binary file (random bytes, an archive's header) under a text suffix
            data = rng.choice([b"\x1f\x8b\x08\x00", b"PK\x03\x04", b"\x89PNG\r\n\x1a\n", b""]) + bytes(
                rng.getrandbits(8) for _ in range(rng.randint(64, 4096))
            )
            if b"\xff" not in data and b"\x80" not in data:
                data += b"\xff\x80"  # never valid UTF-8
            suffix = rng.choice([".jsonl", ".txt"])
            line = 1 if suffix == ".jsonl" else data.count(b"\n", 0, _first_bad_utf8(data)) + 1
            if suffix == ".jsonl":
                line = _first_bad_jsonl_line(data)
            cases.append(Case("binary_file", f"case{index}{suffix}", data, line))
        elif roll < 0.25:  # a text file (one document) with bad UTF-8 on some line
            lines = [" ".join(rng.choice(WORDS) for _ in range(5)).encode() for _ in range(rng.randint(1, 6))]
            at = rng.randrange(len(lines))
            lines[at] += b"\xfe"
            cases.append(Case("bad_utf8_text", f"case{index}.txt", b"\n".join(lines) + b"\n", at + 1))
        else:
            kinds = LINE_KINDS + (["huge_line"] if huge and index % 50 == 7 else [])
            kind = "huge_line" if "huge_line" in kinds else rng.choice(LINE_KINDS)
            lines = [good_line(rng) for _ in range(rng.randint(0, 6))]
            at = rng.randint(0, len(lines))
            lines.insert(at, bad_jsonl_line(rng, kind))
            blank = rng.random() < 0.3  # blank lines count as lines in the message
            data = b"\n".join(lines) + b"\n"
            if blank:
                data = b"\n" + data
            cases.append(Case(kind, f"case{index}.jsonl", data, at + 1 + int(blank)))
    return cases


def _first_bad_utf8(data: bytes) -> int:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return len(data)


def _first_bad_jsonl_line(data: bytes) -> int:
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return number
        if not isinstance(value, dict) or not isinstance(value.get("text"), str):
            return number
    return 0


def default_tokenizer():
    from internlm import registry
    from internlm.api import compose
    from internlm.planning import to_typed

    return registry.build(to_typed(compose(["task=prepare_data"])).tokenizer)


def check_in_process(case: Case, workdir: Path, tokenizer) -> list[str]:
    """Both readers (prepare_data, data=text) must raise ConfigError naming file:line, and write nothing."""
    from internlm import registry
    from internlm.components.data.text import TextDataConfig
    from internlm.errors import ConfigError
    from internlm.tasks.prepare_data import PrepareDataConfig, prepare_data

    path = workdir / case.name
    path.write_bytes(case.data)
    problems = []
    where = f"{path.name}:{case.line}"
    readers = {
        "prepare_data": lambda: prepare_data(
            PrepareDataConfig(input=[str(path)], output=str(workdir / "store"), workers=1, progress=False), tokenizer
        ),
        "data=text": lambda: registry.build(
            TextDataConfig(paths=[str(path)], seq_len=8, global_batch_size=1, max_chars=HUGE_CHARS - 1), tokenizer
        ),
    }
    for reader, call in readers.items():
        try:
            call()
            problems.append(f"{reader}: accepted")
        except ConfigError as exc:
            message = exc.render()
            if where not in message:
                problems.append(f"{reader}: message does not name {where}: {message.splitlines()[0][:160]}")
            if message.count("error:") != 1:
                problems.append(f"{reader}: {message.count('error:')} 'error:' lines")
        except Exception as exc:  # anything else is a traceback for the user
            problems.append(f"{reader}: {type(exc).__name__}: {str(exc)[:160]}")
    written = sorted(p.name for p in workdir.iterdir() if p.name != case.name)
    if written:
        problems.append(f"wrote {written[:3]}")
    return problems


def check_cli(case: Case, workdir: Path) -> list[str]:
    """`python -m internlm task=prepare_data ...` as a user types it: exit 2, one message, no traceback."""
    path = workdir / case.name
    path.write_bytes(case.data)
    run_dir, store = workdir / "run", workdir / "store"
    result = subprocess.run(
        [sys.executable, "-m", "internlm", "task=prepare_data", f"task.input={path}", f"task.output={store}",
         "task.workers=1", "task.progress=false", f"hydra.run.dir={run_dir}"],
        cwd=workdir, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True, timeout=300,
    )
    problems = refusal_problems(result, label="cli: ")
    if f"{case.name}:{case.line}" not in result.stderr:
        problems.append(f"cli: message does not name {case.name}:{case.line}")
    written = sorted(p.name for p in workdir.iterdir() if p.name != case.name)
    if written:
        problems.append(f"cli: wrote {written[:3]}")
    return problems


def campaign(count: int, seed: int, cli: int = 0, huge: bool = True) -> list[dict]:
    tokenizer = default_tokenizer()
    results = []
    for index, case in enumerate(generate(count, seed, huge)):
        with tempfile.TemporaryDirectory() as tmp:
            problems = check_in_process(case, Path(tmp), tokenizer)
        if index < cli:
            with tempfile.TemporaryDirectory() as tmp:
                problems += check_cli(case, Path(tmp))
        results.append({"kind": case.kind, "name": case.name, "bytes": len(case.data), "problems": problems})
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--cli", type=int, default=10, help="how many of the cases also run through the command line")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/campaigns/data_fuzz_results.json"))
    args = parser.parse_args()
    results = campaign(args.count, args.seed, args.cli)
    failed = [r for r in results if r["problems"]]
    kinds: dict[str, int] = {}
    for r in results:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    summary = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cases": len(results), "cli_cases": args.cli,
        "kinds": kinds, "clean": len(results) - len(failed), "failed": failed,
    }
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"{summary['clean']}/{len(results)} bad input files refused cleanly ({args.cli} also through the CLI); kinds {kinds}")
    for r in failed:
        print("  FAIL", r["kind"], r["name"], "->", "; ".join(r["problems"]))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
