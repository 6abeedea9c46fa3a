"""Fine-tuning from stock weights: ``yolo train model=yolov8n-tood.yaml pretrained=stock.pt`` transfers backbone + neck.

Ultralytics' trainer loads ``pretrained`` weights with ``DetectionModel.load`` (``intersect_dicts``: same name and
shape). The TOOD YAMLs keep YOLOv8's layer indices for the backbone and neck (``model.0`` to ``model.21``), so every
one of their tensors transfers from a stock checkpoint, whatever its number of classes; the head (``model.22``) has
other names and starts from its own initialisation.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from yolo_tood.nn.head import TOODDetect

ROOT = Path(__file__).resolve().parents[1]
TOOD_N = ROOT / "cfg" / "yolov8n-tood.yaml"


def stock_checkpoint(nc: int) -> dict:
    """A stock yolov8n checkpoint dict as the trainer saves it (the model in half precision)."""
    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=nc, verbose=False)
    for m in model.modules():  # non-default BN statistics, so that a transferred buffer is recognisable
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    return {"model": model.half()}


@pytest.mark.parametrize("stock_nc,tood_nc", [(80, 80), (3, 7)])
def test_stock_checkpoint_transfers_backbone_and_neck(stock_nc, tood_nc):
    ckpt = stock_checkpoint(stock_nc)
    source = ckpt["model"].float().state_dict()
    torch.manual_seed(1)
    tood = DetectionModel(str(TOOD_N), nc=tood_nc, verbose=False)
    head_before = {k: v.clone() for k, v in tood.state_dict().items() if k.startswith("model.22.")}
    tood.load(ckpt["model"], verbose=False)
    state = tood.state_dict()

    body = [k for k in state if int(k.split(".")[1]) < 22]  # backbone and neck: model.0 ... model.21
    assert len(body) > 200
    for k in body:
        torch.testing.assert_close(state[k].float(), source[k].float(), msg=f"{k} was not transferred")
    assert isinstance(tood.model[-1], TOODDetect)
    for k, v in head_before.items():  # the T-Head keeps its own initialisation (DFL's fixed bins are equal anyway)
        torch.testing.assert_close(state[k], v, msg=f"head tensor {k} was overwritten")


def test_compare_fine_tunes_every_model_from_one_checkpoint(tmp_path_factory, tmp_path, capsys):
    """``yolo-tood compare --pretrained`` hands the checkpoint to each model's trainer and records it in the recipe."""
    import hashlib

    import yaml
    from test_diagnostics import make_dataset

    from yolo_tood.tools.commands import compare

    data = make_dataset(tmp_path_factory.mktemp("tiny_finetune"), n_train=2, n_val=2)
    argv = ["--epochs", "1", "--imgsz", "64", "--batch", "2", "--seeds", "0", "--workers", "0", "--val-only"]
    argv += ["--data", str(data)]
    compare.main([*argv, "--models", "stock", "--out", str(tmp_path / "scratch")])
    start = tmp_path / "scratch" / "runs" / "stock_s0" / "weights" / "best.pt"
    report = compare.main([*argv, "--models", "tood", "--out", str(tmp_path / "ft"), "--pretrained", str(start)])
    assert report["recipe"]["pretrained"] == str(start.resolve())
    # the checkpoint's bytes too: another checkpoint at the same path is another recipe
    assert report["recipe"]["pretrained_sha256"] == hashlib.sha256(start.read_bytes()).hexdigest()
    (record,) = report["runs"]["tood"].values()  # the one run, seed 0
    assert record["recipe"]["pretrained_sha256"] == report["recipe"]["pretrained_sha256"]
    args = yaml.safe_load((tmp_path / "ft" / "runs" / "tood_s0" / "args.yaml").read_text())
    assert args["pretrained"] == str(start.resolve())  # what the ultralytics trainer loaded its weights from
    with pytest.raises(SystemExit) as exc:
        compare.main([*argv, "--models", "tood", "--out", str(tmp_path / "x"), "--pretrained", str(tmp_path / "no.pt")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exc.value.code == 2 and err.startswith("yolo-tood compare: error: argument --pretrained:")
    assert err.endswith("no.pt' is not a file") and not (tmp_path / "x").exists()  # refused before any run
