"""``scripts/gpu_check.py``, the one prepared GPU check, runs end to end: here on the CPU at a tiny size (smoke test).

On the GPU machine it runs through ``scripts/gpu_check.sh run`` at 640 px; here the same steps (train stock / TOOD /
TAP with ``amp=True``, one TAP run with ``deterministic=False``, forward timing, ONNX export and onnxruntime parity)
run on 64 px shapes for one epoch, and the report has every field docs/evidence.md's GPU figures come from.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from yolo_tood.data import make_shapes_dataset

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_on_cpu(tmp_path):
    data = make_shapes_dataset(tmp_path / "shapes", train=8, val=4, imgsz=64)
    report_path = tmp_path / "gpu_check.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--data", str(data)]
    cmd += ["--epochs", "1", "--imgsz", "64", "--batch", "4", "--workers", "0", "--rounds", "2", "--warmup", "1"]
    cmd += ["--runs", str(tmp_path / "runs"), "--json", str(report_path), "--cost-models", "yolov8n", "yolo26n"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    report = json.loads(report_path.read_text())
    assert set(report["runs"]) == {"stock", "tood", "tap", "tap_nondeterministic"}
    assert report["ok"] and all(r["losses_finite"] and r["epochs"] == 1 for r in report["runs"].values())
    assert not report["runs"]["tap_nondeterministic"]["deterministic"]
    assert report["runs"]["stock"]["train_speed_vs_stock"] == 1.0
    for batch in ("batch1", "batch32"):
        assert set(report["forward_ms"][batch]) == {"stock", "tood", "tap"}
        assert all(v["ms"] > 0 and math.isfinite(v["vs_stock"]) for v in report["forward_ms"][batch].values())
    assert set(report["forward_cost"]) == {"yolov8n", "yolo26n", "yolo26n-nms"}
    for cost in report["forward_cost"].values():
        assert all(set(cost[b]) == {"stock", "tap", "tood"} for b in ("batch1", "batch32"))
        assert cost["batch1"]["stock"]["vs_stock"] == 1.0 and all(v["ms"] > 0 for v in cost["batch32"].values())
    assert "| yolov8n-tap | nms |" in report["launches"] and "| yolo26n-tood | nms-free |" in report["launches"]
    for name, parity in report["onnx"].items():  # the exported graph computes what the checkpoint computes
        assert parity["max_score_diff"] < 1e-3 and parity["max_box_diff_px"] < 0.1, (name, parity)


def test_results_csv_read_without_polars(tmp_path, monkeypatch):
    """Where polars is missing (the GPU image), the trainer's results.csv reader falls back to the csv module."""
    import importlib.util
    import types

    from ultralytics.engine.trainer import BaseTrainer

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setitem(sys.modules, "polars", None)  # import polars raises ImportError
    monkeypatch.setattr(BaseTrainer, "read_results_csv", BaseTrainer.read_results_csv)  # restored afterwards
    gpu_check.read_results_without_polars()
    trainer = types.SimpleNamespace(csv=tmp_path / "results.csv")
    trainer.csv.write_text("                  epoch,  train/box_loss\n1,2.5\n2,2.0\n")
    assert BaseTrainer.read_results_csv(trainer) == {"epoch": [1.0, 2.0], "train/box_loss": [2.5, 2.0]}
    trainer.csv.unlink()
    assert BaseTrainer.read_results_csv(trainer) == {}
