"""Bad labels reaching TOODLoss fail with one clear line; zero-size boxes are dropped, counted and logged per epoch."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from yolo_tood.integration.callbacks import on_train_epoch_end
from yolo_tood.train.loss import TOODLoss

STRIDES = (8.0, 16.0, 32.0)
NC, IMGSZ, BS = 80, 64, 4


class FakeHead(nn.Module):
    """The attributes of TOODDetect that TOODLoss reads."""

    def __init__(self):
        super().__init__()
        self.nc, self.reg_max, self.epoch = NC, 16, None
        self.stride = torch.tensor(STRIDES)
        self.dummy = nn.Parameter(torch.zeros(1))


class FakeModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.model = nn.ModuleList([FakeHead()])
        self.yaml = {"nc": NC, "atss_epochs": 1}  # epoch 0 is the warm-up


def preds() -> dict:
    g = torch.Generator().manual_seed(0)
    na = sum((IMGSZ // int(s)) ** 2 for s in STRIDES)
    return {
        "boxes": torch.randn(BS, 64, na, generator=g),
        "offsets": torch.zeros(BS, 8, na),
        "scores": torch.rand(BS, NC, na, generator=g) * 0.1,
        "feats": [torch.zeros(BS, 1, IMGSZ // int(s), IMGSZ // int(s)) for s in STRIDES],
    }


def batch(n: int = 20) -> dict:
    """``n`` labels spread over the BS images in order (label i is in image i * BS // n)."""
    g = torch.Generator().manual_seed(1)
    return {
        "batch_idx": (torch.arange(n) * BS // n).float(),
        "cls": torch.randint(0, NC, (n, 1), generator=g).float(),
        "bboxes": torch.cat((torch.rand(n, 2, generator=g), torch.rand(n, 2, generator=g) * 0.4 + 0.1), 1),
    }


@pytest.mark.parametrize("warmup", [True, False], ids=["atss", "tal"])
@pytest.mark.parametrize(
    ("value", "shown"), [(80.0, "80.0"), (-1.0, "-1.0"), (2.5, "2.5"), (float("nan"), "nan"), (1e9, "1000000000.0")]
)
def test_bad_class_id_raises_one_line_naming_the_label(value, shown, warmup):
    criterion = TOODLoss(FakeModel())
    criterion.head.epoch = 0 if warmup else None
    b = batch()
    b["cls"][17] = value  # label 17 of 20 is in image 17 * 4 // 20 = 3
    msg = f"TOOD: batch label 17 (image 3) has class {shown}, expected an integer in [0, 80)"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        criterion(preds(), b)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_box_raises(value):
    b = batch()
    b["bboxes"][5, 2] = value  # an infinite width gave a NaN box loss in the warm-up
    with pytest.raises(ValueError, match=r"^TOOD: batch label 5 \(image 1\) has a non-finite box \(x, y, w, h\) = "):
        TOODLoss(FakeModel())(preds(), b)


@pytest.mark.parametrize("value", [4.0, -1.0, 0.5])
def test_image_index_outside_the_batch_raises(value):
    b = batch()
    b["batch_idx"][19] = value
    msg = f"TOOD: batch label 19 has image index {value}, expected an integer in [0, 4)"
    with pytest.raises(ValueError, match=f"^{re.escape(msg)}$"):
        TOODLoss(FakeModel())(preds(), b)


@pytest.mark.parametrize("warmup", [True, False], ids=["atss", "tal"])
def test_zero_size_boxes_are_dropped_and_counted(warmup):
    criterion = TOODLoss(FakeModel())
    criterion.head.epoch = 0 if warmup else None
    b = batch()
    b["bboxes"][[2, 7]] *= torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 1.0, 1.0, -1.0]])  # w = 0, h < 0
    keep = torch.ones(20, dtype=torch.bool)
    keep[[2, 7]] = False
    clean = {k: v[keep] for k, v in b.items()}
    loss, _ = criterion(preds(), b)
    assert criterion.dropped_boxes == 2
    reference = TOODLoss(FakeModel())
    reference.head.epoch = criterion.head.epoch
    ref, _ = reference(preds(), clean)
    torch.testing.assert_close(loss, ref)  # dropping == never having had them
    criterion(preds(), b)
    assert criterion.dropped_boxes == 4  # accumulates until the epoch callback resets it


def test_epoch_end_logs_dropped_boxes_once_and_resets(tmp_path, log):
    from pathlib import Path

    from ultralytics.nn.tasks import DetectionModel

    cfg = Path(__file__).resolve().parents[1] / "cfg" / "yolov8n-tood.yaml"
    model, ema = DetectionModel(str(cfg), nc=3, verbose=False), DetectionModel(str(cfg), nc=3, verbose=False)
    model.criterion, ema.criterion = model.init_criterion(), ema.init_criterion()
    model.criterion.dropped_boxes, ema.criterion.dropped_boxes = 3, 2
    trainer = SimpleNamespace(model=model, ema=SimpleNamespace(ema=ema), epoch=0, save_dir=tmp_path)
    on_train_epoch_end(trainer)
    on_train_epoch_end(trainer)  # nothing dropped since: no second line
    assert [m for m in log if "zero-size" in m] == ["WARNING ⚠️ TOOD: dropped 5 zero-size boxes this epoch"]
    assert model.criterion.dropped_boxes == 0 and ema.criterion.dropped_boxes == 0


def test_epoch_end_callback_is_registered():
    from ultralytics.utils.callbacks.base import default_callbacks

    assert on_train_epoch_end in default_callbacks["on_train_epoch_end"]
