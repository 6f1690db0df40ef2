"""bench/fp8_gemm_replay.py reads a profiler trace right: each gemm call gets its operands and the
device time of the kernels it launched, found by External id or, failing that, by its launch."""

import json

import torch

from bench import fp8_gemm_replay as replay


def op(name, ts, dur, ext, tid=1, dims=None, strides=None, types=None, concrete=None):
    args = {"External id": ext}
    if dims is not None:
        args |= {"Input Dims": dims, "Input Strides": strides, "Input type": types, "Concrete Inputs": concrete}
    return {"ph": "X", "cat": "cpu_op", "name": name, "ts": ts, "dur": dur, "tid": tid, "args": args}


FP8 = ["c10::Float8_e4m3fn", "c10::Float8_e5m2", "float", "float", "", "", "Scalar", "Scalar"]
DIMS = [[16, 32], [32, 8], [], [], [], [], [], []]
STRIDES = [[32, 1], [1, 32], [], [], [], [], [], []]


def test_calls_are_grouped_by_operand_layout_with_their_kernels_time():
    events = [
        op("aten::_scaled_mm", 0, 10, 1, dims=DIMS, strides=STRIDES, types=FP8, concrete=["", "", "", "", "", "", "15", "False"]),
        op("aten::_scaled_mm", 20, 10, 2, dims=DIMS, strides=STRIDES, types=FP8, concrete=["", "", "", "", "", "", "15", "False"]),
        # the same sizes with a transposed `a`: another signature
        op("aten::_scaled_mm", 40, 10, 3, dims=DIMS, strides=[[1, 16], [1, 32]], types=FP8, concrete=["", "", "", "", "", "", "15", "True"]),
        op("aten::empty", 41, 1, 4),  # nested in call 3: its kernel belongs to call 3
        {"cat": "kernel", "name": "gemm_a", "ts": 5, "dur": 100.0, "args": {"External id": 1, "correlation": 11}},
        {"cat": "kernel", "name": "gemm_a", "ts": 25, "dur": 300.0, "args": {"External id": 2, "correlation": 12}},
        {"cat": "kernel", "name": "fill", "ts": 45, "dur": 7.0, "args": {"External id": 4, "correlation": 13}},
        # no External id: found through the launch at ts 43, inside call 3
        {"cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": 43, "dur": 1, "tid": 1, "args": {"correlation": 14}},
        {"cat": "kernel", "name": "gemm_b", "ts": 50, "dur": 50.0, "args": {"correlation": 14}},
        {"cat": "kernel", "name": "stray", "ts": 90, "dur": 999.0, "args": {"External id": 99, "correlation": 15}},
    ]
    rows = replay.summarize(replay.scaled_mm_calls(events), iterations=2)
    by_layout = {(tuple(r["a_strides"]), r["use_fast_accum"]): r for r in rows}
    plain = by_layout[((32, 1), "False")]
    assert plain["calls_per_iteration"] == 1.0 and plain["program_us"] == 200.0
    assert plain["program_us_min_max"] == [100.0, 300.0] and plain["program_kernels"] == ["gemm_a"]
    assert plain["m_k_n"] == [16, 32, 8] and (plain["a_dtype"], plain["b_dtype"]) == ("float8_e4m3fn", "float8_e5m2")
    transposed = by_layout[((1, 16), "True")]
    assert transposed["program_us"] == 57.0 and transposed["program_kernels"] == ["fill", "gemm_b"]
    assert rows[0] is plain  # the largest time per iteration first


def test_a_real_profiler_trace_is_read(tmp_path):
    """torch.profiler's own trace format (CPU here: the op and its operands, no kernels)."""
    a = torch.randn(24, 16).to(torch.float8_e4m3fn)
    b = torch.randn(8, 16).to(torch.float8_e4m3fn).t()
    one = torch.tensor(1.0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True)
        torch.mm(torch.randn(4, 6), torch.randn(6, 5))
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    rows = replay.summarize(replay.scaled_mm_calls(replay.load_trace(str(path))), iterations=1)
    got = {r["op"]: r for r in rows}
    assert got["aten::_scaled_mm"]["m_k_n"] == [24, 16, 8]
    assert got["aten::_scaled_mm"]["a_strides"] == [16, 1] and got["aten::_scaled_mm"]["b_strides"] == [1, 16]
    assert got["aten::_scaled_mm"]["use_fast_accum"] == "True"
    assert got["aten::mm"]["m_k_n"] == [4, 6, 5] and got["aten::mm"]["use_fast_accum"] == "-"
    json.dumps(rows)  # what --out writes
