"""scripts/bench_speed.py: its ratios, timing loop, matmul GFLOPs and table against hand-computed cases, and one tiny
end-to-end scale (PyTorch and ONNX Runtime, stock / tood / tap side by side)."""

from __future__ import annotations

import pytest
from helpers import load_script
from ultralytics.nn.tasks import DetectionModel

bench_speed = load_script("bench_speed")


def test_latency_ratio_is_the_median_of_paired_ratios_not_the_ratio_of_medians():
    res = {
        "params": {"stock": 4.0, "tap": 5.0},
        "torch_ms_runs": {"stock": [10.0, 20.0, 40.0], "tap": [11.0, 30.0, 40.0]},  # paired: 1.1, 1.5, 1.0
    }
    assert bench_speed.ratio(res, "params", "tap") == 1.25
    assert bench_speed.ratio(res, "torch_ms", "tap") == pytest.approx(1.1)  # the ratio of medians would be 1.5


def test_interleaved_times_every_callable_once_per_round_in_a_shuffled_order():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abcd"}
    times = bench_speed.interleaved_times_ms(fns, runs=6, warmup=2, seed=0)
    assert {k: len(v) for k, v in times.items()} == dict.fromkeys("abcd", 6)
    assert all(t >= 0 for v in times.values() for t in v)
    assert calls[:8] == list("abcd") * 2  # the warm-up rounds in a fixed order
    rounds = [calls[8 + 4 * i : 12 + 4 * i] for i in range(6)]
    assert all(sorted(r) == list("abcd") for r in rounds)
    assert len({tuple(r) for r in rounds}) > 1  # shuffled: not the same order every round


def test_matmul_gflops_counts_the_task_decomposition_matmuls_of_the_t_head_only():
    tood = DetectionModel("yolov8n-tood.yaml", nc=3, verbose=False)
    head = tood.model[-1]
    anchors = sum((64 // int(s)) ** 2 for s in head.stride)  # 64 + 16 + 4 at strides 8, 16, 32
    c, s = head.feat_channels, head.stacked_convs
    assert bench_speed.matmul_gflops(tood, 64) == pytest.approx(2 * 2 * c * s * c * anchors / 1e9)
    assert bench_speed.matmul_gflops(DetectionModel("yolov8n-tap.yaml", nc=3, verbose=False), 64) == 0.0


def test_table_has_a_row_per_model_and_a_ratio_row_per_head():
    runs = {"stock": [10.0, 10.0], "tap": [12.0, 11.0], "tap_none": [10.0, 11.0]}
    r = {"params": {"stock": 2e6, "tap": 2.1e6, "tap_none": 2.05e6}}
    r["gflops"] = r["gflops_all"] = {"stock": 8.0, "tap": 8.4, "tap_none": 8.2}
    r["torch_ms_runs"] = r["ort_ms_runs"] = runs
    r["torch_ms"] = r["ort_ms"] = {k: sorted(v)[0] for k, v in runs.items()}
    md = bench_speed.table({"n": r}, threads=1, load=(0.5, 0.7))
    assert "| yolov8n | 2.00 | 8.0 | 8.0 | 10.0 | 10.0 |" in md
    assert "| **n: TAP / stock** | 1.050 | 1.050 | 1.050 | **1.150** | **1.150** |" in md
    assert "| n: TAP tap none / stock | 1.025 | 1.025 | 1.025 | 1.050 | 1.050 |" in md
    assert "tood" not in md  # no row for a model that was not timed


def test_bench_scale_times_stock_tood_and_tap_side_by_side(tmp_path):
    pytest.importorskip("onnxruntime")
    res = bench_speed.bench_scale("n", 64, runs=2, warmup=0, threads=1, opset=18, workdir=tmp_path, reference=False)
    for metric in ("params", "gflops", "gflops_all", "torch_ms", "ort_ms"):
        assert set(res[metric]) == {"stock", "tood", "tap"}, metric
        assert all(v > 0 for v in res[metric].values()), metric
    assert all(len(v) == 2 for v in res["ort_ms_runs"].values())
    assert res["params"]["stock"] < res["params"]["tap"] <= 1.05 * res["params"]["stock"]
    assert res["gflops_all"]["tood"] > res["gflops"]["tood"]  # the matmuls added for the T-Head only
    assert res["gflops_all"]["tap"] == res["gflops"]["tap"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stock", "tap", "tood"]  # one ONNX folder per model


def test_unmerged_tap_fuses_without_merging_its_predictors_to_the_same_outputs():
    import torch
    from ultralytics import YOLO

    torch.manual_seed(0)
    merged, unmerged = YOLO("yolov8n-tap.yaml"), YOLO("yolov8n-tap.yaml")
    unmerged.model.load_state_dict(merged.model.state_dict())
    bench_speed.keep_predictors_unmerged(unmerged)
    a, b = (bench_speed.fused_eval(y) for y in (merged, unmerged))
    head_a, head_b = a.model[-1], b.model[-1]
    assert head_a.merged_predictors is not None and head_a.cls_prob is None
    assert getattr(head_b, "merged_predictors", None) is None and head_b.cls_prob is not None
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x)[0], b(x)[0], atol=1e-4, rtol=1e-5)
