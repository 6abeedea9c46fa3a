"""``scripts/gpu_check.py``, the one prepared GPU check, runs end to end: here on the CPU at a tiny size (smoke test).

On the GPU machine it runs through ``scripts/gpu_check.sh run`` at 640 px; here the same steps (train stock / TOOD /
TAP with ``amp=True``, one TAP run with ``deterministic=False``, forward timing, ONNX export and onnxruntime parity)
run on 64 px shapes for one epoch, and the report has every field the README's GPU section reads.
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
    cmd += ["--runs", str(tmp_path / "runs"), "--json", str(report_path)]
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
    for name, parity in report["onnx"].items():  # the exported graph computes what the checkpoint computes
        assert parity["max_score_diff"] < 1e-3 and parity["max_box_diff_px"] < 0.1, (name, parity)
