"""kill -9 campaign: a tiny CPU run killed at random moments (start-up, steps, checkpoint writes),
restarted each time with trainer.resume=auto until it finishes; every committed checkpoint must
verify, and the final weights must equal an uninterrupted run's.

With ``--devices N`` the run is N gloo processes (DDP) and a kill takes them all (the process
group, as a lost node or a cancelled job does). With ``--resume-devices M`` the last restart, after
the kills, runs at another world size. The property: at the same world size the final weights are
bitwise equal (same data order, same reduction order); at another world size every step sees the
same global batch (the data position is a position on the global sample stream), so only the
order of the gradient sums changes: the weights agree to fp32 rounding (reported as the largest
relative norm difference of a tensor).

    .venv/bin/python -m bench.campaigns.kill9 --kills 20 --seed 0
    .venv/bin/python -m bench.campaigns.kill9 --kills 10 --devices 2 --resume-devices 4
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

RUN = [
    "data.seq_len=64", "data.micro_batch_size=2", "trainer.val_every=0",
    "trainer.loggers=[csv]", "trainer.sample_tokens=0", "trainer.progress_bar=false", "trainer.log_every=1",
    "trainer.checkpoint_every=2", "trainer.keep_checkpoints=2", "debug.slow_checkpoint_s=0.3",
]


STRATEGY = ["strategy=ddp"]  # of the multi-process runs; --strategy fsdp for FSDP2


def start(run_dir: Path, max_steps: int, resume: bool, devices: int = 1, global_batch: int = 4) -> subprocess.Popen:
    args = [sys.executable, "-m", "internlm", *RUN, f"data.global_batch_size={global_batch}",
            f"trainer.max_steps={max_steps}", f"hydra.run.dir={run_dir}"]
    if devices > 1:
        args += ["trainer.accelerator=cpu", f"trainer.devices={devices}", *STRATEGY]
    if resume:
        args.append("trainer.resume=auto")
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    # its own session: a kill takes every rank (Fabric's launcher starts ranks 1.. as children)
    # stderr to a file: a full pipe would stall the run being measured
    log = run_dir.parent / f"{run_dir.name}-{time.monotonic_ns()}.log"
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=env, start_new_session=True)
    proc.log = log
    return proc


def kill_all(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def final_weights(run_dir: Path, max_steps: int) -> dict[str, torch.Tensor]:
    import internlm

    model, _ = internlm.load(run_dir / "checkpoints" / f"step-{max_steps:08d}")
    return {k: v.clone() for k, v in model.state_dict().items()}


KILL_MOMENTS = ("start-up", "steps", "checkpoint write", "steps")


def wait_for(proc: subprocess.Popen, condition, timeout: float) -> float | None:
    """Seconds until ``condition()`` held, or None when the process ended or the time ran out first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        if condition():
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def campaign(
    kills: int, seed: int, max_steps: int, workdir: Path, devices: int = 1, resume_devices: int | None = None,
    kill_moments: tuple[str, ...] = KILL_MOMENTS,
) -> dict:
    from internlm.runtime import checkpoint

    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    resume_devices = resume_devices or devices
    batch = 8 if max(devices, resume_devices) > 1 else 4  # every world size up to 4 gets whole micro batches of 2
    reference = workdir / "reference"
    for attempt in (1, 2):  # a gloo launch rarely aborts while connecting: retried once
        t0 = time.monotonic()
        proc = start(reference, max_steps, resume=False, devices=devices, global_batch=batch)
        first_checkpoint_s = wait_for(proc, lambda: checkpoint.complete_checkpoints(reference), 600)
        proc.wait()
        if proc.returncode == 0:
            break
        shutil.rmtree(reference, ignore_errors=True)
    assert proc.returncode == 0, proc.log.read_text()[-3000:]
    full_s = time.monotonic() - t0
    killed = workdir / "killed"
    done_kills, restarts, bad_exits, damaged = 0, 0, [], []
    moments = {"start-up": 0, "steps": 0, "checkpoint write": 0}
    while True:
        last = done_kills >= kills
        before = [p.name for p in checkpoint.complete_checkpoints(killed)]
        proc = start(killed, max_steps, resume=True, devices=resume_devices if last else devices, global_batch=batch)
        restarts += 1
        if not last:
            # Where to kill: start-up (before training resumes), during steps (after a new
            # checkpoint shows training runs), or inside a checkpoint write (its partial folder exists).
            moment = kill_moments[done_kills % len(kill_moments)]  # each kind in turn; the moment within it is random
            if moment == "start-up":
                reached = wait_for(proc, lambda: False, rng.uniform(0.5, first_checkpoint_s or 5.0)) is None
            elif moment == "steps":
                newer = lambda: [p.name for p in checkpoint.complete_checkpoints(killed)] not in ([], before)  # noqa: E731
                reached = wait_for(proc, newer, 600) is not None
                time.sleep(rng.uniform(0, 1.0))
            else:
                reached = wait_for(proc, lambda: list((killed / "checkpoints").glob(".step-*.partial")), 600) is not None
                time.sleep(rng.uniform(0, 0.25))  # inside debug.slow_checkpoint_s=0.3
            if reached and proc.poll() is None:
                kill_all(proc)
                done_kills += 1
                moments[moment] += 1
                for ckpt in checkpoint.complete_checkpoints(killed):
                    problem = checkpoint.damage(ckpt)
                    if problem:
                        damaged.append(problem)
                continue
            proc.wait()
        else:
            proc.wait()
        if proc.returncode != 0:
            text = proc.log.read_text()
            errors = [line for line in text.splitlines() if "Error" in line or line.startswith("error:")]
            bad_exits.append("\n".join(errors[:3]) + "\n..." + text[-400:])
            if len(bad_exits) > 3:
                break
            continue
        if (killed / "checkpoints" / f"step-{max_steps:08d}").is_dir():
            break
    same, largest = False, None
    if (killed / "checkpoints" / f"step-{max_steps:08d}").is_dir():
        a, b = final_weights(reference, max_steps), final_weights(killed, max_steps)
        same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        if a.keys() == b.keys():
            largest = max(float((a[k].double() - b[k].double()).norm() / b[k].double().norm().clamp(min=1e-30)) for k in a)
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "devices": devices,
        "resume_devices": resume_devices, "global_batch": batch, "kills": done_kills, "kills_by_moment": moments,
        "restarts": restarts, "max_steps": max_steps, "uninterrupted_s": round(full_s, 1),
        "final_weights_bitwise_equal": same, "largest_relative_difference": largest,
        "damaged_checkpoints": damaged, "bad_exits": bad_exits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=40)
    parser.add_argument("--devices", type=int, default=1, help="gloo processes of the killed run (DDP when > 1)")
    parser.add_argument("--resume-devices", type=int, default=None, help="world size of the last restart (default: --devices)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="largest relative difference accepted at another world size")
    parser.add_argument("--strategy", default="ddp", help="strategy of the multi-process runs (ddp, fsdp, hybrid_zero)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    STRATEGY[:] = [f"strategy={args.strategy}"]
    out = args.out or Path(f"bench/campaigns/kill9_results{'' if args.devices == 1 and not args.resume_devices else f'_{args.devices}to{args.resume_devices or args.devices}'}.json")
    with tempfile.TemporaryDirectory() as tmp:
        result = campaign(args.kills, args.seed, args.max_steps, Path(tmp), args.devices, args.resume_devices)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "bad_exits"}, indent=1))
    same_world = result["resume_devices"] == result["devices"]
    equal = result["final_weights_bitwise_equal"] if same_world else (result["largest_relative_difference"] or 1) <= args.rtol
    ok = equal and not result["damaged_checkpoints"] and not result["bad_exits"]
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
