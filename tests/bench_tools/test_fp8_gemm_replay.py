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
    rows = replay.summarize(replay.gemm_calls(events), iterations=2)
    by_layout = {(tuple(r["a_strides"]), r["use_fast_accum"]): r for r in rows}
    plain = by_layout[((32, 1), "False")]
    assert plain["calls_per_iteration"] == 1.0 and plain["program_us"] == 200.0
    assert plain["program_us_min_max"] == [100.0, 300.0] and plain["program_kernels"] == ["gemm_a"]
    assert plain["m_k_n"] == [16, 32, 8] and (plain["a_dtype"], plain["b_dtype"]) == ("float8_e4m3fn", "float8_e5m2")
    transposed = by_layout[((1, 16), "True")]
    assert transposed["program_us"] == 57.0 and transposed["program_kernels"] == ["fill", "gemm_b"]
    assert rows[0] is plain  # the largest time per iteration first


def cpu_trace(tmp_path):
    """torch.profiler's own trace of two iterations of three gemms (CPU: ops and operands, no kernels);
    the second fp8 gemm's `a` is column-major, which cuBLAS would not take as it is."""
    a = torch.randn(24, 16).to(torch.float8_e4m3fn)
    a_column_major = a.t().contiguous().t()
    b = torch.randn(8, 16).to(torch.float8_e4m3fn).t()
    one = torch.tensor(1.0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(2):
            torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16, use_fast_accum=True)
            torch._scaled_mm(a_column_major, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
            torch.mm(torch.randn(4, 6), torch.randn(6, 5))
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    return replay.gemm_calls(replay.load_trace(str(path)))


def test_a_real_profiler_trace_is_read(tmp_path):
    rows = replay.summarize(cpu_trace(tmp_path), iterations=2)
    assert len(rows) == 3 and all(r["calls_per_iteration"] == 1.0 for r in rows)
    got = {(r["op"], tuple(r["a_strides"])): r for r in rows}
    fast = got[("aten::_scaled_mm", (16, 1))]
    assert fast["m_k_n"] == [24, 16, 8] and fast["b_strides"] == [1, 16] and fast["use_fast_accum"] == "True"
    assert got[("aten::_scaled_mm", (1, 24))]["use_fast_accum"] == "False"
    assert got[("aten::mm", (6, 1))]["m_k_n"] == [4, 6, 5] and got[("aten::mm", (6, 1))]["use_fast_accum"] == "-"
    json.dumps(rows)  # what --out writes


def test_the_replay_times_each_call_and_one_iteration_in_order(tmp_path):
    calls = cpu_trace(tmp_path)
    rows = replay.summarize(calls, iterations=2)
    replayed = replay.replay(rows, repeat=2, device="cpu")
    assert all(r["alone_us"] > 0 for r in rows)
    by_layout = {(r["op"], tuple(r["a_strides"])): r for r in rows}
    assert "canonical_us" not in by_layout[("aten::_scaled_mm", (16, 1))]  # already canonical
    assert by_layout[("aten::_scaled_mm", (1, 24))]["canonical_us"] > 0  # timed again row-major
    sequence = replay.replay_sequence(calls, 2, replayed, device="cpu", min_seconds=0.01)
    assert sequence["gemms_per_iteration"] == 3 and sequence["sequence_ms_per_iteration"] > 0
