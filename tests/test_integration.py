"""End to end through the stock ``yolo`` CLI and fresh processes: train, predict, resume, safe loading."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from yolo_tood.data import shared_datasets

ROOT = Path(__file__).resolve().parents[1]
COCO128 = shared_datasets(ROOT) / "coco128" / "coco128.yaml"
YOLO_CLI = Path(sys.executable).parent / "yolo"
needs_coco128 = pytest.mark.skipif(not COCO128.exists(), reason=f"{COCO128} is absent (set YOLO_TOOD_SHARED)")


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One epoch of yolov8n-tood on coco128 at imgsz 64 through the stock ``yolo`` command, from the repo's cfg."""
    if not COCO128.exists():
        pytest.skip(f"{COCO128} is absent (set YOLO_TOOD_SHARED)")
    project = tmp_path_factory.mktemp("cli")
    args = "epochs=1 imgsz=64 batch=16 workers=0 device=cpu plots=False name=train"
    run(
        [str(YOLO_CLI), "train", "model=cfg/yolov8n-tood.yaml", f"data={COCO128}", f"project={project}", *args.split()],
        ROOT,
    )
    return project / "train" / "weights" / "best.pt"


@needs_coco128
def test_cli_trains_and_a_fresh_process_predicts(trained, tmp_path):
    assert trained.exists()
    image = sorted((COCO128.parent / "images" / "train2017").glob("*.jpg"))[0]
    code = (
        "import sys; from ultralytics import YOLO; "
        f"r = YOLO(r'{trained}').predict(r'{image}', imgsz=64, conf=0.0, verbose=False)[0]; "
        "print(type(YOLO(r'%s').model.model[-1]).__name__, len(r.boxes), float(r.boxes.conf.max()))" % trained
    )
    out = run([sys.executable, "-c", code], tmp_path).stdout.split()
    assert out[0] == "TOODDetect" and int(out[1]) > 0 and 0 < float(out[2]) <= 1


@needs_coco128
def test_checkpoint_loads_under_safe_load(trained, tmp_path):
    code = f"from ultralytics import YOLO; m = YOLO(r'{trained}'); print(type(m.model.model[-1]).__name__)"
    out = run([sys.executable, "-c", code], tmp_path, env={"ULTRALYTICS_SAFE_LOAD": "1"}).stdout
    assert out.strip().endswith("TOODDetect")


@needs_coco128
def test_cli_val_reports_metrics(trained, tmp_path):
    proc = run(
        [str(YOLO_CLI), "val", f"model={trained}", f"data={COCO128}", "imgsz=64", "batch=16", "workers=0"], tmp_path
    )
    row = re.search(r"^\s+all\s+128\s+(\d+)((?:\s+\S+){4})\s*$", proc.stdout + proc.stderr, re.MULTILINE)
    assert row, (proc.stdout + proc.stderr)[-3000:]  # the summary row: images, instances, P, R, mAP50, mAP50-95
    assert int(row[1]) > 0 and all(0 <= float(v) <= 1 for v in row[2].split())


@needs_coco128
def test_yolo11_tood_trains_through_the_cli(tmp_path):
    """One epoch of yolo11n-tood on coco128 at imgsz 64, as the v8 config; the checkpoint holds the TOOD head."""
    args = "epochs=1 imgsz=64 batch=16 workers=0 device=cpu plots=False name=train11"
    proc = run(
        [
            str(YOLO_CLI),
            "train",
            "model=cfg/yolo11n-tood.yaml",
            f"data={COCO128}",
            f"project={tmp_path}",
            *args.split(),
        ],
        ROOT,
    )
    log = proc.stdout + proc.stderr
    assert "YOLO11n-tood summary" in log and "C2PSA" in log  # YOLO11's backbone at the n scale
    code = (
        "from ultralytics import YOLO; m = YOLO(r'%s').model; h = m.model[-1]; "
        "print(type(h).__name__, h.feat_channels, h.stacked_convs, len(m.model))"
    ) % (tmp_path / "train11" / "weights" / "best.pt")
    out = run([sys.executable, "-c", code], tmp_path).stdout.split()
    assert out == ["TOODDetect", "40", "2", "24"], out  # n: 160 * 0.25 channels, max(round(3 * 0.5), 2) convs


def _interrupting_trainer_script(cfg: Path, project: Path) -> str:
    """Train 2 epochs and kill the process right after epoch 1's last.pt is saved, as a crash would."""
    return f"""
import os
from ultralytics import YOLO
m = YOLO(r'{cfg}')
m.add_callback('on_model_save', lambda t: os._exit(0) if t.epoch == 0 else None)
m.train(data=r'{COCO128}', epochs=2, imgsz=64, batch=16, workers=0, device='cpu', plots=False,
        project=r'{project}', name='resume', val=False)
"""


@needs_coco128
def test_resume_continues_in_the_right_phase(tmp_path):
    """A 2-epoch run whose warm-up is half the schedule (1 epoch), killed after epoch 1, resumes at epoch 2 in the TAL
    phase: the warm-up is resolved again from the epochs that resume restores, not from a default."""
    d = yaml.safe_load((ROOT / "cfg" / "yolov8-tood.yaml").read_text())
    assert d.get("atss_epochs") is None  # the default YAML follows the fraction
    d["atss_fraction"] = 0.5
    cfg = tmp_path / "yolov8n-tood.yaml"
    cfg.write_text(yaml.safe_dump(d, sort_keys=False))
    proc = run([sys.executable, "-c", _interrupting_trainer_script(cfg, tmp_path)], tmp_path)
    assert "TOOD: ATSS warm-up for epoch 1 of 2 (atss_fraction 0.5), then TAL" in proc.stdout + proc.stderr
    last = tmp_path / "resume" / "weights" / "last.pt"
    assert last.exists()
    proc = run([str(YOLO_CLI), "train", "resume=True", f"model={last}"], tmp_path)
    log = proc.stdout + proc.stderr
    assert "Resuming training" in log
    assert "TOOD: ATSS warm-up for epoch 1 of 2 (atss_fraction 0.5), then TAL" in log
    assert "TOOD: starting at epoch 2 in the TAL phase" in log
    rows = (tmp_path / "resume" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + epochs 1 and 2


def test_demo_runs_on_generated_data(tmp_path):
    """The README's main command, shortened to 1 epoch at 64 px: needs no network and no shared data."""
    from yolo_tood.demo import main

    summary = main(
        ["--out", str(tmp_path), "--epochs", "1", "--imgsz", "64", "--train-images", "32", "--val-images", "8"]
    )
    assert Path(summary["weights"]).exists()
    assert any(Path(summary["predictions"]).glob("*.jpg"))
    assert 0.0 <= summary["map50_95"] <= summary["map50"] <= 1.0
    shutil.rmtree(tmp_path, ignore_errors=True)
