"""``atss_cls_target``: the warm-up's classification target, hard labels (the reference) or GFL's IoU."""

from __future__ import annotations

import pytest
import torch
from test_loss import FakeHead, FakeModel, random_batch, random_preds
from ultralytics.utils.metrics import bbox_iou

import yolo_tood.train.loss as loss_mod
from yolo_tood.train.hyp import TOODHyp
from yolo_tood.train.loss import TOODLoss


def run_warmup(monkeypatch, epoch: int = 0, **keys):
    """One loss call in the given epoch; returns (which loss ran, its target, the _cls_loss arguments, the loss)."""
    head = FakeHead(nc=3)
    head.epoch = epoch  # atss_epochs is 4: epochs 0-3 are the warm-up
    crit = TOODLoss(FakeModel(head, **keys))
    seen = {}
    for name in ("focal_loss_prob", "quality_focal_loss_prob"):
        original = getattr(loss_mod, name)

        def spy(pred, target, *a, _name=name, _f=original):
            seen.update(kind=_name, target=target.clone())
            return _f(pred, target, *a)

        monkeypatch.setattr(loss_mod, name, spy)
    cls_loss = crit._cls_loss
    monkeypatch.setattr(crit, "_cls_loss", lambda *a: seen.update(args=a) or cls_loss(*a))
    _, _, preds = random_preds(2, 3, 16, 64, offset_std=0.3)
    loss, items = crit(preds(), random_batch([4, 3], nc=3))
    return seen, items


def test_hard_is_the_default_and_the_reference(monkeypatch):
    assert TOODHyp().atss_cls_target == "hard"
    seen, _ = run_warmup(monkeypatch)
    res = seen["args"][1]
    assert seen["kind"] == "focal_loss_prob" and int(res.fg_mask.sum()) > 0
    fg = res.fg_mask.nonzero(as_tuple=True)
    assert torch.equal(seen["target"][fg[0], fg[1], res.labels[fg]], torch.ones(len(fg[0])))  # label 1
    assert float(seen["target"].sum()) == len(fg[0])  # and 0 everywhere else


def test_iou_target_is_the_predicted_box_iou_with_its_gt(monkeypatch):
    seen, items = run_warmup(monkeypatch, atss_cls_target="iou")
    _, res, _, pred_bboxes, stride_tensor = seen["args"]
    assert seen["kind"] == "quality_focal_loss_prob"  # GFL's loss in the warm-up
    fg = res.fg_mask.nonzero(as_tuple=True)
    expected = bbox_iou(pred_bboxes[fg] * stride_tensor[fg[1]], res.bboxes[fg], xywh=False).squeeze(-1)
    got = seen["target"][fg[0], fg[1], res.labels[fg]]
    assert torch.allclose(got, expected.clamp(min=0)) and bool((got > 0).any()) and bool((got < 1).all())
    assert float(seen["target"].sum()) == pytest.approx(float(got.sum()))  # 0 everywhere else
    assert torch.isfinite(items["cls_loss"])


def test_iou_target_changes_nothing_after_the_warmup(monkeypatch):
    a, items_a = run_warmup(monkeypatch, epoch=5)
    b, items_b = run_warmup(monkeypatch, epoch=5, atss_cls_target="iou")
    assert a["kind"] == b["kind"] == "quality_focal_loss_prob" and torch.equal(a["target"], b["target"])
    assert all(torch.equal(items_a[k], items_b[k]) for k in items_a)


def test_bad_value_is_one_line():
    with pytest.raises(ValueError, match="atss_cls_target"):
        TOODHyp(atss_cls_target="soft")
