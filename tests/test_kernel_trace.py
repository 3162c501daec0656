"""scripts/kernel_trace.py: the per-step kernel figures of a Chrome trace (the recording itself needs a GPU)."""

import json

from scripts import kernel_trace


def test_busy_time_is_the_union_of_intervals():
    assert kernel_trace.busy_time([(0, 10), (5, 12), (20, 25), (21, 22)]) == 17
    assert kernel_trace.busy_time([]) == 0


def test_summary_of_a_hand_made_trace(tmp_path):
    events = [
        {"cat": "kernel", "name": "nvjet_sm90_tst_256x128", "ts": 0, "dur": 300},
        {"cat": "kernel", "name": "mlx::core::cu::custom_kernel_trm_swiglu_fwd_abc", "ts": 300, "dur": 100},
        {"cat": "kernel", "name": "void mlx::core::cu::copy_g_nd<bf16>", "ts": 450, "dur": 50},
        {"cat": "kernel", "name": "nvjet_sm90_tst_256x128", "ts": 1000, "dur": 300},
        {"cat": "gpu_memset", "name": "Memset (Device)", "ts": 1300, "dur": 10},
        {"cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 5000},  # host events are not kernels
    ]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": events}))
    summary = kernel_trace.summarize(path, steps=2)
    assert summary["launches_per_step"] == 2.5
    assert summary["busy_ms_per_step"] == 0.38  # (300 + 100 + 50 + 300 + 10) us over 2 steps
    assert summary["span_ms_per_step"] == 0.655  # 0 .. 1310 us
    assert summary["by_class_ms"] == {"matmul": 0.3, "ours": 0.05, "copy": 0.03}
    top = summary["top_kernels"][0]
    assert (top["name"], top["per_step"], top["mean_us"]) == ("nvjet_sm90_tst_256x128", 1.0, 300.0)
    assert "ours" in kernel_trace.format_summary("mlx", summary)


def test_a_trace_without_kernels_says_so(tmp_path):
    path = tmp_path / "trace.json"
    path.write_text(json.dumps({"traceEvents": [{"cat": "cpu_op", "name": "x", "ts": 0, "dur": 1}]}))
    assert "error" in kernel_trace.summarize(path, steps=1)
