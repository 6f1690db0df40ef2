"""Config fuzzing: generated bad command lines, each run as a user would (`python -m internlm`).

Every one must end with exit code 2, one `error:` message, no traceback, and no file written.

    .venv/bin/python -m bench.campaigns.config_fuzz --count 200 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

# Bad values per field: wrong types, out-of-range values, impossible meshes, bad paths.
BAD_VALUES = {
    "optimizer.lr": ["-1", "0", "abc", "[1,2]"],
    "optimizer.betas": ["[0.9,1.5]", "[-0.1,0.9]", "nope"],
    "optimizer.weight_decay": ["-1", "x"],
    "optimizer.eps": ["0", "-1e-8"],
    "scheduler.warmup_fraction": ["2", "-0.5", "abc"],
    "scheduler.min_lr": ["-1"],
    "model.norm.eps": ["0", "-1", "5"],
    "model.num_layers": ["0", "-2", "two"],
    "model.num_heads": ["0", "5"],
    "trainer.max_steps": ["abc", "[1]"],
    "trainer.devices": ["0", "-1"],
    "trainer.accelerator": ["tpu"],
    "trainer.precision": ["fp13"],
    "trainer.loggers": ["[wandb]"],
    "trainer.activation_checkpointing": ["sometimes"],
    "trainer.max_consecutive_skips": ["x"],
    "tokenizer.path": ["/nonexistent/tok.model"],
    "data.seq_len": ["0", "-8", "abc"],
    "data.global_batch_size": ["0", "3.5"],
}
GROUPS = ["model", "optimizer", "scheduler", "data", "tokenizer", "trainer", "strategy", "loss", "objective", "task"]
WORDS = ["lrr", "maxsteps", "foo", "hidden", "colour", "seqlen", "bogus_key"]


def unknown_key(rng: random.Random) -> str:
    """An unknown key at depth 1-3, e.g. `optimizer.lrr=0.1`, `model.norm.foo=1`, `trainer.x.y=2`."""
    depth = rng.randint(1, 3)
    parts = [rng.choice(GROUPS)] if depth > 1 else []
    if depth == 3:
        parts.append(rng.choice(["norm", "attention", "rotary", "sub"]))
    parts.append(rng.choice(WORDS))
    return ".".join(parts) + "=" + rng.choice(["1", "0.1", "x"])


def bad_line(rng: random.Random) -> list[str]:
    kind = rng.random()
    if kind < 0.35:
        return [unknown_key(rng)]
    if kind < 0.45:
        return [f"{rng.choice(GROUPS)}={rng.choice(['nosuch', 'tiny_typo', 'x'])}"]
    field = rng.choice(sorted(BAD_VALUES))
    return [f"{field}={rng.choice(BAD_VALUES[field])}"]


def generate(count: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    seen, lines = set(), []
    while len(lines) < count:
        line = ["task=plan"] + bad_line(rng)
        if tuple(line) not in seen:
            seen.add(tuple(line))
            lines.append(line)
        if len(seen) > 50 * count:
            break
    return lines


def check(line: list[str], workdir: Path) -> dict:
    """Run one command line in an empty folder; what it did wrong, if anything."""
    run_dir = workdir / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "internlm", *line, f"hydra.run.dir={run_dir}"],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )
    problems = refusal_problems(result)
    written = [str(p.relative_to(workdir)) for p in workdir.rglob("*")]
    if written:
        problems.append(f"wrote {written[:3]}")
    return {"line": line, "problems": problems, "stderr": result.stderr[-600:]}


def refusal_problems(result: subprocess.CompletedProcess, label: str = "") -> list[str]:
    """What a refused command did wrong: anything but exit code 2 with one message and no traceback."""
    problems = []
    if result.returncode != 2:
        problems.append(f"{label}exit code {result.returncode}")
    if "Traceback" in result.stderr:
        problems.append(f"{label}traceback")
    if result.stderr.count("error:") != 1:
        problems.append(f"{label}{result.stderr.count('error:')} 'error:' lines")
    return problems


def campaign(count: int, seed: int) -> list[dict]:
    out = []
    for line in generate(count, seed):
        with tempfile.TemporaryDirectory() as tmp:
            out.append(check(line, Path(tmp)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/campaigns/config_fuzz_results.json"))
    args = parser.parse_args()
    results = campaign(args.count, args.seed)
    failed = [r for r in results if r["problems"]]
    summary = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "lines": len(results), "clean": len(results) - len(failed), "failed": failed,
    }
    args.out.write_text(json.dumps(summary, indent=1))
    print(f"{summary['clean']}/{len(results)} bad command lines ended cleanly (exit 2, one message, nothing written)")
    for r in failed:
        print("  FAIL", " ".join(r["line"]), "->", ", ".join(r["problems"]))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
