"""End to end: a 2-epoch TOOD training at 64 px writes one tal_stats.jsonl line per epoch and, with plots=True,
tal_stats.png beside results.png; ``yolo-tood tal-stats`` draws it from the .jsonl too."""

from __future__ import annotations

import json

import pytest
import yaml
from test_diagnostics import REPO, make_dataset

from yolo_tood.data import make_shapes_dataset
from yolo_tood.tools.cli import run_command
from yolo_tood.train.tal_stats import SIZE_LABELS


def test_training_writes_tal_stats(tmp_path):
    from ultralytics import YOLO

    d = yaml.safe_load((REPO / "cfg" / "yolov8-tood.yaml").read_text())
    d["atss_epochs"] = 1  # epoch 1 ATSS, epoch 2 TAL
    cfg = tmp_path / "yolov8n-tood.yaml"
    cfg.write_text(yaml.safe_dump(d, sort_keys=False))
    data = make_dataset(tmp_path / "data", n_train=4, n_val=2)
    model = YOLO(str(cfg))
    model.train(data=str(data), epochs=2, imgsz=64, batch=4, workers=0, device="cpu", plots=True,
                project=str(tmp_path), name="run", val=True)  # fmt: skip
    run = tmp_path / "run"
    lines = [json.loads(x) for x in (run / "tal_stats.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2] and [x["phase"] for x in lines] == ["ATSS", "TAL"]
    for x in lines:
        assert set(x) == {"epoch", "phase", "gts", "pos_per_gt", "zero_pos_share", "by_size", "by_class", "cls"}
        if x["phase"] == "ATSS":  # focal loss on hard labels: every positive's target is 1
            assert x["cls"]["target_mean"] == pytest.approx(1.0)
        assert 0 < x["cls"]["target_mean"] <= 1 and 0 <= x["cls"]["loss_pos_share"] <= 1
        assert list(x["by_size"]) == list(SIZE_LABELS)
        assert x["gts"] == sum(c["gts"] for c in x["by_class"].values())  # every GT has its class
        assert x["gts"] == sum(b["gts"] for b in x["by_size"].values()) > 0  # mosaic may add or crop boxes
        assert x["pos_per_gt"] >= 0 and 0 <= x["zero_pos_share"] <= 1
    assert (run / "results.png").exists() and (run / "tal_stats.png").stat().st_size > 0
    assert run / "tal_stats.png" in model.trainer.plots
    run_command("tal-stats", [str(run), "--out", str(tmp_path / "again.png")])
    assert (tmp_path / "again.png").stat().st_size > 0


@pytest.mark.parametrize("plots", [True, False])
def test_one_epoch_draws_tal_stats_only_with_plots(tmp_path, plots):
    """``plots=True`` draws tal_stats.png beside results.png at the end of training; ``plots=False`` neither."""
    from ultralytics import YOLO

    data = make_shapes_dataset(tmp_path / "shapes", train=8, val=4, imgsz=64)
    YOLO("yolov8n-tood.yaml").train(data=str(data), epochs=1, imgsz=64, batch=4, workers=0, device="cpu",
                                    plots=plots, project=str(tmp_path), name="run")  # fmt: skip
    run = tmp_path / "run"
    assert (run / "tal_stats.jsonl").is_file()
    assert (run / "tal_stats.png").exists() is plots and (run / "results.png").exists() is plots
