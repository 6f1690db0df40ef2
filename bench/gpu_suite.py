"""One device call's worth of measurements: kernel table, our training throughput, the torchtitan
peer, each in its own process (a crash costs one row), under a wall-clock budget, with a
compact table printed last. Logs go to $OUT (few files: the device tool returns at most 8).

    python bench/gpu_suite.py PLAN --out "$OUT" --budget 540

PLAN names a list in PLANS below. The peer runs from a writable copy of .peer/torchtitan (shared/peers/
torchtitan, git-ignored, carried to the device) whose launch.py gains the 7B shape cut to 1-16 layers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# (kind, tag, arguments). kind: kernels | ours | peer. The peer's arguments: flavor, then flags.
LAYERS = "16"
MATCHED = ["--layers", LAYERS, "--seq", "4096", "--batch", "2"]
PLANS: dict[str, list[tuple[str, str, list[str]]]] = {
    "cpu": [  # a smoke test of this driver on a machine without a GPU
        ("kernels", "kernels-cpu", ["--device", "cpu", "--quick"]),
        ("ours", "ours-cpu", ["--device", "cpu", "--tiny"]),
    ],
    "smoke": [
        ("kernels", "kernels-env", ["--only", "env,ceilings"]),
    ],
    "call1": [
        ("kernels", "kernels-env", ["--only", "env,ceilings"]),
        ("ours", "ours-ac-op", MATCHED + ["--ac", "op", "--steps", "15"]),
        ("peer", "peer-default", [f"llama2_7b_l{LAYERS}"]),
        ("ours", "ours-ac-none", MATCHED + ["--ac", "none", "--steps", "15"]),
        ("kernels", "kernels-attention", ["--only", "attention"]),
        ("kernels", "kernels-loss", ["--only", "loss"]),
        ("kernels", "kernels-ops", ["--only", "ops"]),
    ],
    "call2": [
        ("peer", "peer-default", [f"llama2_7b_l{LAYERS}"]),
        ("ours", "ours-b2-none", MATCHED + ["--ac", "none", "--warmup", "4", "--steps", "10"]),
        ("ours", "ours-b4-none-bf16", MATCHED[:-1] + ["4", "--ac", "none", "--precision", "bf16", "--warmup", "4", "--steps", "10"]),
        ("ours", "ours-b2-none-bf16", MATCHED + ["--ac", "none", "--precision", "bf16", "--warmup", "4", "--steps", "10"]),
        ("ours", "ours-b4-none", MATCHED[:-1] + ["4", "--ac", "none", "--warmup", "4", "--steps", "10"]),
        ("kernels", "kernels-attention", ["--only", "attention"]),
        ("ours", "ours-b2-none-varlen", MATCHED + ["--ac", "none", "--attention", "varlen", "--warmup", "4", "--steps", "10"]),
        ("ours", "ours-b2-none-ce", MATCHED + ["--ac", "none", "--loss", "cross_entropy", "--warmup", "4", "--steps", "10"]),
        ("peer", "peer-ac-none", [f"llama2_7b_l{LAYERS}", "--activation_checkpoint.mode", "none"]),
        ("ours", "ours-b8-none-bf16", MATCHED[:-1] + ["8", "--ac", "none", "--precision", "bf16", "--warmup", "4", "--steps", "10"]),
    ],
    "call3": [
        ("peer", "peer-b4-ac-none", [f"llama2_7b_l{LAYERS}", "--activation_checkpoint.mode", "none", "--training.local_batch_size", "4"]),
        ("ours", "ours-b4-none-ce", MATCHED[:-1] + ["4", "--ac", "none", "--loss", "cross_entropy", "--warmup", "4", "--steps", "10"]),
        ("peer", "peer-default", [f"llama2_7b_l{LAYERS}"]),
        ("ours", "ours-b4-none-ce-1doc", MATCHED[:-1] + ["4", "--ac", "none", "--loss", "cross_entropy", "--mean-doc", "0", "--warmup", "4", "--steps", "10"]),
        ("ours", "ours-b4-none", MATCHED[:-1] + ["4", "--ac", "none", "--warmup", "4", "--steps", "10"]),
    ],
}


PEER_COPY = "/tmp/torchtitan_peer"  # .peer/torchtitan plus the layer-cut flavors (the carried copy is read-only)
LAYER_CUT_FLAVORS = """
import dataclasses as _dc
for _n in (1, 2, 4, 8, 16):  # the 7B layer shape cut to fewer layers: fits one GPU; 1 layer warms the compile cache
    llama3_args[f"llama2_7b_l{_n}"] = _dc.replace(llama3_args["llama2_7b"], n_layers=_n)
"""


def peer_dir() -> str:
    """A writable copy of .peer/torchtitan whose launch.py also knows llama2_7b_l{1,2,4,8,16}."""
    import shutil

    if not os.path.isdir(PEER_COPY):
        shutil.copytree(os.path.join(ROOT, ".peer", "torchtitan"), PEER_COPY)
        launch = os.path.join(PEER_COPY, "launch.py")
        os.chmod(launch, 0o644)
        with open(launch) as f:
            text = f.read()
        marker = "from torchtitan.train import"
        if "llama2_7b_l" not in text and marker in text:
            text = text.replace(marker, LAYER_CUT_FLAVORS + marker, 1)
        with open(launch, "w") as f:
            f.write(text)
        run_sh = os.path.join(PEER_COPY, "run.sh")
        os.chmod(run_sh, 0o755)
        with open(run_sh) as f:
            script = f.read()
        with open(run_sh, "w") as f:  # torchrun may not be on PATH where torch came as a wheel
            f.write(script.replace("torchrun --nproc", "python3 -m torch.distributed.run --nproc"))
    return PEER_COPY


def peer_command(tag: str, extra: list[str]) -> tuple[list[str], dict]:
    """torchtitan on one GPU (`run.sh 1 FLAVOR flags...`) and its environment; its log is /tmp/<tag>.log."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TT_LOG=os.path.join("/tmp", f"{tag}.log"))
    # The peer's stand-in `datasets` (synthetic text) must win over a real datasets wheel on the
    # path, which would look for torchtitan's c4_test files (run.sh only appends the stubs).
    env["PYTHONPATH"] = os.path.join(peer_dir(), "stubs") + os.pathsep + os.environ.get("PYTHONPATH", "")
    return ["bash", os.path.join(peer_dir(), "run.sh"), "1"] + extra, env


def run_logged(cmd: list[str], env: dict, log, timeout: float, tag: str) -> tuple[str, str]:
    """Run one benchmark process, its output appended to `log`: (output, 'rc=N' or 'timeout')."""
    log.write(f"\n===== {tag}: {shlex.join(cmd)}\n")
    log.flush()
    try:
        proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)
        text, status = proc.stdout, f"rc={proc.returncode}"
    except subprocess.TimeoutExpired as exc:
        text = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        status = "timeout"
    return text, status


PEER_SUMMARY = re.compile(r"median TGS ([\d,]+)\s+TFLOP/s/GPU ([\d.]+)\s+MFU ([\d.]+)%\s+max_reserved ([\d.]+)GiB")


def peer_result(text: str, env: dict, log) -> dict:
    """The peer's SUMMARY line parsed; its full log appended to `log`."""
    if os.path.exists(env["TT_LOG"]):
        with open(env["TT_LOG"], errors="replace") as f:
            log.write(f.read()[-200_000:])  # the full torchtitan log, newest part if very long
    lines = [ln for ln in text.splitlines() if ln.startswith("SUMMARY")]
    result = {"summary": lines[-1] if lines else text[-600:]}
    m = PEER_SUMMARY.search(result["summary"])
    if m:
        result.update(
            tokens_per_device_per_s=float(m.group(1).replace(",", "")),
            tflops=float(m.group(2)),
            mfu_tt=float(m.group(3)) / 100,
            peak_reserved_gib=float(m.group(4)),
        )
    return result


def run_step(kind: str, tag: str, extra: list[str], out_dir: str, deadline: float, log) -> dict:
    left = deadline - time.time()
    if left < 60:
        return {"kind": kind, "tag": tag, "status": f"skipped: {left:.0f} s of budget left"}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if kind == "kernels":
        cmd = [sys.executable, os.path.join(HERE, "kernels.py"), "--out", os.path.join(out_dir, f"{tag}.json")] + extra
    elif kind == "ours":
        cmd = [sys.executable, os.path.join(HERE, "train_throughput.py"), "--tag", tag, "--json", os.path.join(out_dir, "results.jsonl")] + extra
    elif kind == "peer":
        cmd, env = peer_command(tag, extra)
    else:
        raise ValueError(kind)
    start = time.time()
    text, status = run_logged(cmd, env, log, left - 20, tag)
    peer = peer_result(text, env, log) if kind == "peer" else {}
    log.write(text)
    log.flush()
    elapsed = time.time() - start
    result = {"kind": kind, "tag": tag, "status": status, "seconds": round(elapsed), **peer}
    if kind == "ours":
        lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
        if lines:
            result.update(json.loads(lines[-1][len("RESULT ") :]))
        else:
            result["tail"] = text[-600:]
    elif kind != "peer" and status != "rc=0":
        result["tail"] = text[-600:]
    print(f"[{time.strftime('%H:%M:%S')}] {tag}: {status} in {elapsed:.0f} s", flush=True)
    return result


def kernel_summary(out_dir: str) -> list[str]:
    lines = []
    for name in sorted(os.listdir(out_dir)):
        if not (name.startswith("kernels-") and name.endswith(".json")):
            continue
        with open(os.path.join(out_dir, name)) as f:
            data = json.load(f)
        for section in ("ceilings", "attention", "loss", "ops"):
            for r in data.get(section, []):
                lines.append(f"{section:9s} " + " ".join(f"{k}={_short(v)}" for k, v in r.items()))
        for e in data.get("errors", []):
            lines.append(f"ERROR {e}")
    return lines


def _short(v):
    if isinstance(v, float):
        return f"{v:.3g}"
    if isinstance(v, str) and len(v) > 60:
        return v[:60] + "..."
    return v


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("plan", choices=sorted(PLANS))
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/bench_out"))
    p.add_argument("--budget", type=float, default=540, help="seconds for all steps together")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    deadline = time.time() + args.budget
    results = []
    with open(os.path.join(args.out, "logs.txt"), "a") as log:
        for kind, tag, extra in PLANS[args.plan]:
            results.append(run_step(kind, tag, extra, args.out, deadline, log))
            with open(os.path.join(args.out, "suite.json"), "w") as f:
                json.dump(results, f, indent=1)
    print("\n===== kernels")
    for line in kernel_summary(args.out):
        print(line)
    print("\n===== throughput (one GPU)")
    for r in results:
        if r["kind"] == "ours" and "tokens_per_device_per_s" in r:
            print(
                f"{r['tag']:22s} tok/s {r['tokens_per_device_per_s']:8,.0f}  step {r['step_ms']:7.1f} ms  "
                f"MFU causal {100 * (r['mfu_causal'] or 0):5.1f}%  full {100 * (r['mfu_full_attention'] or 0):5.1f}%  "
                f"InternLM TFLOPS {r['internlm_tflops']:6.1f}  peak {r['peak_alloc_gib'] or 0:.1f}/{r['peak_reserved_gib'] or 0:.1f} GiB  "
                f"attn {r['attention']} loss {r['loss']} ac {r['ac']} b{r['batch']} {r['precision']} "
                f"graphs {r['graphs']}(+{r['graphs_added_after_warmup']}) loss {r['loss_first_last'][0]:.2f}->{r['loss_first_last'][1]:.2f}"
            )
        elif r["kind"] == "peer":
            print(f"{r['tag']:22s} {r.get('summary', r['status'])}")
        elif r["kind"] == "ours" or r["status"] not in ("rc=0",):
            print(f"{r['tag']:22s} {r['status']} {r.get('tail', '')[-400:]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
