"""kill -9 campaign: a tiny CPU run killed at random moments (start-up, steps, checkpoint writes),
restarted each time with trainer.resume=auto until it finishes; its final weights must equal an
uninterrupted run's bitwise, and every committed checkpoint must verify.

    .venv/bin/python -m bench.campaigns.kill9 --kills 20 --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

RUN = [
    "data.seq_len=64", "data.global_batch_size=4", "data.micro_batch_size=2", "trainer.val_every=0",
    "trainer.loggers=[csv]", "trainer.sample_tokens=0", "trainer.progress_bar=false", "trainer.log_every=1",
    "trainer.checkpoint_every=2", "trainer.keep_checkpoints=2", "debug.slow_checkpoint_s=0.3",
]


def start(run_dir: Path, max_steps: int, resume: bool) -> subprocess.Popen:
    args = [sys.executable, "-m", "internlm", *RUN, f"trainer.max_steps={max_steps}", f"hydra.run.dir={run_dir}"]
    if resume:
        args.append("trainer.resume=auto")
    return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def final_weights(run_dir: Path, max_steps: int) -> dict[str, torch.Tensor]:
    import internlm

    model, _ = internlm.load(run_dir / "checkpoints" / f"step-{max_steps:08d}")
    return {k: v.clone() for k, v in model.state_dict().items()}


def campaign(kills: int, seed: int, max_steps: int, workdir: Path) -> dict:
    from internlm.runtime import checkpoint

    rng = random.Random(seed)
    reference = workdir / "reference"
    proc = start(reference, max_steps, resume=False)
    t0 = time.monotonic()
    assert proc.wait() == 0, proc.stderr.read()
    full_s = time.monotonic() - t0
    killed = workdir / "killed"
    done_kills, restarts, bad_exits, damaged = 0, 0, [], []
    while True:
        proc = start(killed, max_steps, resume=True)
        restarts += 1
        if done_kills < kills:
            try:
                proc.wait(timeout=rng.uniform(0.5, 0.3 * full_s))  # start-up, steps and checkpoint writes alike (a resumed run has less left)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                done_kills += 1
                for ckpt in checkpoint.complete_checkpoints(killed):
                    problem = checkpoint.damage(ckpt)
                    if problem:
                        damaged.append(problem)
                continue
        else:
            proc.wait()
        if proc.returncode != 0:
            bad_exits.append(proc.stderr.read()[-800:])
            if len(bad_exits) > 3:
                break
            continue
        if (killed / "checkpoints" / f"step-{max_steps:08d}").is_dir():
            break
    same = False
    if not bad_exits or (killed / "checkpoints" / f"step-{max_steps:08d}").is_dir():
        a, b = final_weights(reference, max_steps), final_weights(killed, max_steps)
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "kills": done_kills, "restarts": restarts,
        "max_steps": max_steps, "uninterrupted_s": round(full_s, 1), "final_weights_bitwise_equal": same,
        "damaged_checkpoints": damaged, "bad_exits": bad_exits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("bench/campaigns/kill9_results.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = campaign(args.kills, args.seed, args.max_steps, Path(tmp))
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "bad_exits"}, indent=1))
    ok = result["final_weights_bitwise_equal"] and not result["damaged_checkpoints"] and not result["bad_exits"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
