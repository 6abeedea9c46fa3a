"""Tests of yolo_tood.loss (TOODLoss, QFL / Focal on probabilities) and yolo_tood.hyp (TOODHyp, check_warmup)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from helpers import load_script
from torch import nn
from ultralytics.utils import LOGGER

from yolo_tood.nn.head import side_shifts
from yolo_tood.train import loss as loss_module
from yolo_tood.train.hyp import TOODHyp, check_warmup
from yolo_tood.train.loss import TOODLoss, centerness, focal_loss_prob, quality_focal_loss_prob

STRIDES = (8.0, 16.0, 32.0)


class FakeHead(nn.Module):
    """The attributes of TOODDetect that TOODLoss reads."""

    def __init__(self, nc: int = 3, reg_max: int = 16):
        super().__init__()
        self.nc, self.reg_max = nc, reg_max
        self.stride = torch.tensor(STRIDES)
        self.epoch = None
        self.dummy = nn.Parameter(torch.zeros(1))  # gives the model a device


class FakeModel(nn.Module):
    """An ultralytics-like DetectionModel: ``model[-1]`` is the head, ``yaml`` the model YAML dict."""

    def __init__(self, head: nn.Module, epochs: int | None = 12, **yaml_keys):
        super().__init__()
        self.model = nn.ModuleList([head])
        self.yaml = {"nc": head.nc, **yaml_keys}
        self.args = {"epochs": epochs} if epochs else None  # the train arguments (a third of 12: a warm-up of 4)


def feats_for(bs: int, imgsz: int) -> list[torch.Tensor]:
    """Return per-level feature maps of the right sizes (only their shapes are used)."""
    return [torch.zeros(bs, 1, imgsz // int(s), imgsz // int(s)) for s in STRIDES]


def random_preds(bs: int, nc: int, reg_max: int, imgsz: int, seed: int = 0, offset_std: float = 0.0):
    """Return leaf tensors (box outputs, score logits) and a function building the head's training dict from them.

    TAP's offsets are zero unless ``offset_std`` > 0 (then normal, in grid units).
    """
    g = torch.Generator().manual_seed(seed)
    na = sum((imgsz // int(s)) ** 2 for s in STRIDES)
    boxes = torch.randn(bs, 4 * reg_max, na, generator=g)
    if reg_max == 1:  # plain distances in stride units
        boxes = boxes.abs() + 0.5
    boxes.requires_grad_(True)
    logits = (torch.randn(bs, nc, na, generator=g) - 2).requires_grad_(True)
    offsets = torch.randn(bs, 8, na, generator=g) * offset_std
    feats = feats_for(bs, imgsz)
    return boxes, logits, lambda: {"boxes": boxes, "offsets": offsets, "scores": logits.sigmoid(), "feats": feats}


def random_batch(counts: list[int], nc: int, seed: int = 0) -> dict:
    """Return an ultralytics batch with ``counts[i]`` GTs in image i (normalised xywh, random sizes)."""
    g = torch.Generator().manual_seed(seed)
    n = sum(counts)
    batch_idx = torch.cat([torch.full((c,), float(i)) for i, c in enumerate(counts)]) if n else torch.zeros(0)
    xy = torch.rand(n, 2, generator=g)
    wh = torch.rand(n, 2, generator=g) * 0.5 + 0.02
    return {
        "batch_idx": batch_idx,
        "cls": torch.randint(0, nc, (n, 1), generator=g).float(),
        "bboxes": torch.cat((xy, wh), 1),
    }


def assert_finite_loss_and_grads(loss: torch.Tensor, items: dict, *leaves: torch.Tensor) -> None:
    """The loss (3,), its items and the gradients of the leaves are all finite."""
    assert loss.shape == (3,) and torch.isfinite(loss).all(), loss
    assert all(torch.isfinite(v).all() for v in items.values()), items
    loss.sum().backward()
    for leaf in leaves:
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


# ----------------------------------------------------------------------------------------------------------------------
# Loss functions on probabilities (hand values)
# ----------------------------------------------------------------------------------------------------------------------


def test_quality_focal_loss_hand_values():
    """QFL = BCE(p, q) * |q - p|^beta.

    p = 0.5, q = 0.8: BCE = -(0.8 ln 0.5 + 0.2 ln 0.5) = ln 2 = 0.693147; |0.3|^2 = 0.09 -> 0.0623832.
    p = 0.3, q = 0 (negative): -ln 0.7 = 0.356675; 0.3^2 = 0.09 -> 0.0321008.
    """
    out = quality_focal_loss_prob(torch.tensor([0.5, 0.3]), torch.tensor([0.8, 0.0]), beta=2.0)
    torch.testing.assert_close(out, torch.tensor([0.0623832, 0.0321008]), atol=1e-6, rtol=1e-5)


def test_focal_loss_hand_values():
    """Focal = BCE(p, y) * (alpha if y else 1 - alpha) * (1 - p_t)^gamma.

    p = 0.9, y = 1: -ln 0.9 = 0.1053605 * 0.25 * 0.1^2 = 0.000263401.
    p = 0.2, y = 0: -ln 0.8 = 0.2231436 * 0.75 * 0.2^2 = 0.00669431.
    """
    out = focal_loss_prob(torch.tensor([0.9, 0.2]), torch.tensor([1.0, 0.0]), gamma=2.0, alpha=0.25)
    torch.testing.assert_close(out, torch.tensor([0.000263401, 0.00669431]), atol=1e-8, rtol=1e-5)


def test_centerness_hand_value():
    """Point (4, 4) in [0, 0, 10, 10]: l = t = 4, r = b = 6 -> sqrt(4/6 * 4/6) = 2/3; the centre gives 1."""
    out = centerness(torch.tensor([[4.0, 4.0], [5.0, 5.0]]), torch.tensor([[0.0, 0, 10, 10], [0.0, 0, 10, 10]]))
    torch.testing.assert_close(out, torch.tensor([2 / 3, 1.0]))


def test_saturated_probabilities_are_finite():
    """Probabilities of exactly 0 and 1 against targets 0, 1 and soft, and p == q, also with exponents below 1 (whose
    |q - p|^beta has an infinite slope at 0): finite losses and gradients."""
    p = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.7], requires_grad=True)
    q = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.7, 0.7, 0.7])
    for exponent in (2.0, 0.5):
        for loss in (
            quality_focal_loss_prob(p, q, beta=exponent),
            focal_loss_prob(p, q.round(), gamma=exponent, alpha=0.25),
        ):
            assert torch.isfinite(loss).all()
            (g,) = torch.autograd.grad(loss.sum(), p)
            assert torch.isfinite(g).all()


# ----------------------------------------------------------------------------------------------------------------------
# TOODLoss
# ----------------------------------------------------------------------------------------------------------------------


def test_tal_loss_hand_computed():
    """One 64 px image, one GT, nc=1, reg_max=1, all probabilities 0.5, tal_topk 21 (so ties do not matter).

    GT [8, 8, 40, 40] (xywh 24/64, 24/64, 0.5, 0.5). Anchor centres strictly inside: stride 8 (4, 12, ..., 60): 12, 20,
    28, 36 on each axis -> 16; stride 16 (8, 24, 40, 56): 24 -> 1 (8 and 40 are on the border); stride 32 (16, 48):
    16 -> 1. So P = 18 of A = 64 + 16 + 4 = 84 anchors.
    Inside anchors predict B' = [8, 8, 24, 40] (the left half of the GT): u = 512 / 1024 = 0.5, GIoU = 0.5 (hull = GT).
    Outside anchors predict a zero-size box at their centre: u = 0, t = 0, never candidates.
    t = 0.5 * 0.5^6 for all positives -> t_hat = t / max t * max u = 0.5; sum t_hat = 9.
    cls (QFL beta 2): positives BCE(0.5, 0.5) * 0^2 = 0; negatives ln 2 * 0.5^2 each ->
        66 * 0.693147 / 4 / 9 = 1.270770.
    box: sum (1 - 0.5) * 0.5 / 9 = 18 * 0.25 / 9 = 0.5 -> * box_gain 2 = 1.0.
    l1 (ultralytics' L1 on ltrb / image size, mean over 4 sides): only r differs, by 16 px -> 16/64/4 = 0.0625 per
        anchor, * t_hat 0.5 -> 18 * 0.03125 / 9 = 0.0625 -> * dfl_gain 0.5 = 0.03125.
    """
    head = FakeHead(nc=1, reg_max=1)
    criterion = TOODLoss(FakeModel(head, tal_topk=21))
    feats = feats_for(1, 64)
    anchors, strides = [], []
    for s in STRIDES:
        c = (torch.arange(64 // int(s)) + 0.5) * s
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        anchors.append(torch.stack((xx, yy), -1).view(-1, 2))
        strides.append(torch.full((xx.numel(), 1), s))
    anc, stride = torch.cat(anchors), torch.cat(strides)  # (84, 2) pixels, (84, 1)
    inside = ((anc > 8.01) & (anc < 39.99)).all(1)
    assert int(inside.sum()) == 18
    box = torch.tensor([8.0, 8.0, 24.0, 40.0])
    ltrb = torch.cat((anc - box[:2], box[2:] - anc), 1) / stride  # (84, 4) distances to B' in stride units
    ltrb[~inside] = 0
    preds = {"boxes": ltrb.t()[None], "offsets": torch.zeros(1, 8, 84), "scores": torch.full((1, 1, 84), 0.5)}
    preds["feats"] = feats
    batch = {"batch_idx": torch.zeros(1), "cls": torch.zeros(1, 1), "bboxes": torch.tensor([[0.375, 0.375, 0.5, 0.5]])}
    loss, items = criterion(preds, batch)
    assert list(items) == ["box_loss", "cls_loss", "l1_loss"]
    torch.testing.assert_close(loss, torch.tensor([1.0, 66 * math.log(2) / 4 / 9, 0.03125]), atol=1e-4, rtol=1e-4)


def test_loss_normalisation_and_gains_match_the_assignment():
    """Both phases: the loss equals formulas written from the assignment (mmdet's TOOD normalisation) * gains * B.

    Warm-up: cls = sum Focal / max(#pos, 1), box = sum (1 - GIoU) * centerness / max(sum centerness, 1).
    TAL: cls = sum QFL(label, t_hat) / max(sum t_hat, 1), box = sum (1 - GIoU) * t_hat / max(sum t_hat, 1).
    DFL is weighted and normalised like the box loss. With TAP's offsets, written out per side: x1 = ax + dx_l - l,
    y1 = ay + dy_t - t, x2 = ax + dx_r + r, y2 = ay + dy_b + b, and the DFL targets are measured from those points.
    """
    from ultralytics.utils.loss import DFLoss
    from ultralytics.utils.metrics import bbox_iou
    from ultralytics.utils.tal import make_anchors

    head = FakeHead(nc=3, reg_max=16)
    criterion = TOODLoss(FakeModel(head, box_gain=3.0, cls_gain=1.5, dfl_gain=0.25))
    boxes, logits, build = random_preds(2, 3, 16, 128, seed=1, offset_std=0.5)
    batch = random_batch([3, 5], 3, seed=2)
    for epoch, warmup in ((0, True), (None, False)):
        head.epoch = epoch
        preds = build()
        loss, _ = criterion(preds, batch)
        # recompute independently from the assignment
        anc, stride = make_anchors(preds["feats"], head.stride, 0.5)
        gt_labels, gt_bboxes, mask_gt = criterion._targets(batch, 2, torch.tensor([128.0, 128.0]))
        dist = preds["boxes"].permute(0, 2, 1).view(2, -1, 4, 16)
        ltrb = dist.softmax(-1) @ torch.arange(16.0)  # (2, A, 4) expected distances
        o = preds["offsets"].permute(0, 2, 1)  # (2, A, 8): dy_l, dx_l, dy_t, dx_t, dy_r, dx_r, dy_b, dx_b
        start = torch.stack(
            (anc[:, 0] + o[..., 1], anc[:, 1] + o[..., 2], anc[:, 0] + o[..., 5], anc[:, 1] + o[..., 6]), -1
        )
        pred_boxes = start + ltrb * torch.tensor([-1.0, -1.0, 1.0, 1.0])  # (2, A, 4) xyxy grid units
        scores = preds["scores"].permute(0, 2, 1)
        if warmup:
            res = criterion.atss_assigner(anc * stride, stride, gt_labels, gt_bboxes, mask_gt, 3)
        else:
            res = criterion.tal_assigner(scores, pred_boxes * stride, anc * stride, gt_labels, gt_bboxes, mask_gt)
        fg = res.fg_mask
        assert fg.any()
        target = torch.zeros_like(scores)
        target[fg, res.labels[fg]] = res.metrics[fg]
        if warmup:
            cls = focal_loss_prob(
                scores, target, criterion.tood_hyp.focal_gamma, criterion.tood_hyp.focal_alpha
            ).sum() / fg.sum().clamp(min=1)
        else:
            cls = quality_focal_loss_prob(scores, target, criterion.tood_hyp.qfl_beta).sum() / res.metrics.sum().clamp(
                min=1
            )
        pts = anc.expand(2, -1, -1)[fg]
        tbox = res.bboxes[fg] / stride.expand(2, -1, -1)[fg]
        w = centerness(pts, tbox) if warmup else res.metrics[fg]
        giou = bbox_iou(pred_boxes[fg], tbox, xywh=False, GIoU=True).squeeze(-1)
        box = ((1 - giou) * w).sum() / w.sum().clamp(min=1)
        dfl_target = ((start[fg] - tbox) * torch.tensor([1.0, 1.0, -1.0, -1.0])).clamp(0, 15 - 0.01)
        dfl = DFLoss(16)(dist[fg].reshape(-1, 16), dfl_target).squeeze(-1)
        dfl = (dfl * w).sum() / w.sum().clamp(min=1)
        expected = torch.stack((box * 3.0, cls * 1.5, dfl * 0.25)) * 2
        torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)


def test_dfl_target_is_measured_from_the_shifted_point():
    """Hand case: one positive at grid point (2.5, 2.5) (stride 8, pixel (20, 20)), GT [8, 8, 40, 40] px = [1, 1, 5, 5]
    grid. Offsets dx_l = +0.5, dy_t = +0.25, dx_r = -0.5, dy_b = +1.0 move the points the sides are measured from to
    x 3.0 (left), y 2.75 (top), x 2.0 (right), y 3.5 (bottom): DFL targets (2.0, 1.75, 3.0, 1.5) instead of the
    anchor's (1.5, 1.5, 2.5, 2.5). The dy of the left side and the dx of the top side etc. do not matter."""
    from yolo_tood.train.assigner import AssignResult

    criterion = TOODLoss(FakeModel(FakeHead(nc=1, reg_max=16)))
    targets = []
    dfl = criterion.dfl_loss
    criterion.dfl_loss = lambda pred, target: (targets.append(target.clone()), dfl(pred, target))[1]
    anchor_points, stride = torch.tensor([[2.5, 2.5]]), torch.tensor([[8.0]])
    res = AssignResult(
        fg_mask=torch.tensor([[True]]),
        gt_idx=torch.tensor([[0]]),
        labels=torch.tensor([[0]]),
        bboxes=torch.tensor([[[8.0, 8.0, 40.0, 40.0]]]),
        metrics=torch.tensor([[1.0]]),
        ious=torch.tensor([[1.0]]),
    )
    pred_distri = torch.zeros(1, 1, 64)
    for offsets, expected in (
        ([9.0, 0.5, 0.25, 9.0, 9.0, -0.5, 1.0, 9.0], [2.0, 1.75, 3.0, 1.5]),  # (dy, dx) per side; 9 = off-axis
        ([0.0] * 8, [1.5, 1.5, 2.5, 2.5]),
    ):
        shifts = side_shifts(torch.tensor(offsets).view(1, 8, 1)).permute(0, 2, 1)  # (1, A, 4)
        pred_bboxes = torch.tensor([[[1.0, 1.0, 5.0, 5.0]]])
        criterion._box_loss(
            pred_distri, pred_bboxes, shifts, anchor_points, stride, torch.tensor([64.0, 64]), res, False
        )
        torch.testing.assert_close(targets[-1], torch.tensor([expected]))


@pytest.mark.parametrize("epoch", [0, None])
def test_faithful_prediction_of_the_gt_has_zero_box_loss(epoch):
    """reg_max 1 with random offsets: distances measured from each side's shifted point to the GT edges decode to the
    GT itself, so the GIoU and L1 losses are 0 in both phases; read from the anchors instead, they are not."""
    from ultralytics.utils.tal import make_anchors

    head = FakeHead(nc=1, reg_max=1)
    head.epoch = epoch
    criterion = TOODLoss(FakeModel(head, tal_topk=13, atss_epochs=1))
    feats = feats_for(1, 64)
    anc, stride = make_anchors(feats, head.stride, 0.5)  # (84, 2) grid units
    gt = torch.tensor([8.0, 8.0, 40.0, 40.0])
    offsets = torch.randn(1, 8, 84, generator=torch.Generator().manual_seed(0)) * 0.3
    o = offsets[0].t()  # (84, 8)
    start = torch.stack((anc[:, 0] + o[:, 1], anc[:, 1] + o[:, 2], anc[:, 0] + o[:, 5], anc[:, 1] + o[:, 6]), -1)
    dist = (start - gt / stride) * torch.tensor([1.0, 1.0, -1.0, -1.0])  # (84, 4) from the shifted points
    batch = {"batch_idx": torch.zeros(1), "cls": torch.zeros(1, 1), "bboxes": torch.tensor([[0.375, 0.375, 0.5, 0.5]])}
    scores = torch.full((1, 1, 84), 0.5)
    loss, _ = criterion({"boxes": dist.t()[None], "offsets": offsets, "scores": scores, "feats": feats}, batch)
    assert loss[0].abs() < 1e-5 and loss[2].abs() < 1e-6 and loss[1] > 0
    loss, _ = criterion({"boxes": dist.t()[None], "offsets": offsets * 0, "scores": scores, "feats": feats}, batch)
    assert loss[0] > 1e-2 and loss[2] > 1e-3


@pytest.mark.parametrize("reg_max", [16, 1])
@pytest.mark.parametrize("epoch", [0, None])
@pytest.mark.parametrize("n_gt", [0, 1, 1000])
def test_finite_loss_and_gradients(n_gt, epoch, reg_max):
    """0, 1 and 1000 GTs per image, in both phases, with DFL and with plain distances: finite loss and gradients."""
    head = FakeHead(nc=3, reg_max=reg_max)
    head.epoch = epoch
    criterion = TOODLoss(FakeModel(head))
    boxes, logits, build = random_preds(2, 3, reg_max, 128, seed=n_gt)
    loss, items = criterion(build(), random_batch([n_gt, n_gt], 3, seed=n_gt))
    assert sorted(items) == sorted(criterion.loss_names)
    if n_gt == 0:
        assert loss[0] == 0 and loss[2] == 0  # no positive: no box loss
    assert_finite_loss_and_grads(loss, items, boxes, logits)


@pytest.mark.parametrize("epoch", [0, None])
def test_degenerate_and_partly_outside_boxes(epoch):
    """Zero-width, zero-height and zero-area GTs, and GTs partly outside the image: finite loss and gradients.

    The zero-size GTs are dropped (and counted). The GT at xywh (0, 0, 0.4, 0.4) has xyxy (-25.6, -25.6, 25.6, 25.6),
    whose coordinates sum to 0: it is a real GT (ultralytics' ``sum > 0`` padding test would drop it), so the mask
    comes from the per-image counts.
    """
    head = FakeHead(nc=2, reg_max=16)
    head.epoch = epoch
    criterion = TOODLoss(FakeModel(head))
    boxes, logits, build = random_preds(2, 2, 16, 128, seed=3)
    xywh = torch.tensor(
        [
            [0.5, 0.5, 0.0, 0.2],  # zero width
            [0.3, 0.3, 0.2, 0.0],  # zero height
            [0.7, 0.7, 0.0, 0.0],  # a point
            [0.0, 0.0, 0.4, 0.4],  # partly outside, top-left
            [1.0, 0.9, 0.5, 0.6],  # partly outside, right
            [0.5, 0.5, 1.5, 1.5],  # larger than the image
        ]
    )
    batch = {"batch_idx": torch.tensor([0.0, 0, 0, 1, 1, 1]), "cls": torch.tensor([[0.0], [1], [0], [1], [0], [1]])}
    batch["bboxes"] = xywh
    _, _, mask_gt = criterion._targets(batch, 2, torch.tensor([128.0, 128.0]))
    assert mask_gt[..., 0].sum(1).tolist() == [0, 3]  # image 0 had only the three zero-size GTs
    assert criterion.dropped_boxes == 3
    loss, items = criterion(build(), batch)
    assert_finite_loss_and_grads(loss, items, boxes, logits)


@pytest.mark.parametrize("epoch", [0, None])
def test_saturated_scores_in_the_criterion(epoch):
    """Aligned scores of exactly 0 and 1 everywhere (a saturated head): finite loss and gradients."""
    head = FakeHead(nc=3, reg_max=16)
    head.epoch = epoch
    criterion = TOODLoss(FakeModel(head))
    boxes, _, build = random_preds(2, 3, 16, 64, seed=4)
    scores = (torch.rand(2, 3, 84) > 0.5).float().requires_grad_(True)
    preds = {**build(), "scores": scores}
    loss, items = criterion(preds, random_batch([4, 2], 3, seed=5))
    assert_finite_loss_and_grads(loss, items, boxes, scores)


def _spy(calls: list, name: str, fn):
    """Return ``fn`` wrapped so that every call appends ``name`` to ``calls``."""

    def wrapper(*args, **kwargs):
        calls.append(name)
        return fn(*args, **kwargs)

    return wrapper


def test_phase_follows_head_epoch(monkeypatch):
    """epoch < warm-up -> ATSS + Focal; epoch >= warm-up -> TAL + QFL; None -> TAL. The head's epoch is read at every
    call, so a criterion built before a resume (or used by the validator) follows the head; the warm-up is the YAML's
    fraction (here 0.5) of the train arguments' epochs (8): 4."""
    head = FakeHead(nc=3, reg_max=16)
    criterion = TOODLoss(FakeModel(head, epochs=8, atss_fraction=0.5))
    calls = []
    for name in ("tal_assigner", "atss_assigner"):
        module = getattr(criterion, name)
        monkeypatch.setattr(module, "forward", _spy(calls, name, module.forward))
    for name in ("focal_loss_prob", "quality_focal_loss_prob"):
        monkeypatch.setattr(loss_module, name, _spy(calls, name, getattr(loss_module, name)))
    _, _, build = random_preds(1, 3, 16, 64)
    batch = random_batch([2], 3)
    warm, tal = ["atss_assigner", "focal_loss_prob"], ["tal_assigner", "quality_focal_loss_prob"]
    for epoch in (5, 0, 3, None, 4, 10):  # in any order: e.g. a run resumed at epoch 5, then a new run
        head.epoch = epoch
        calls.clear()
        criterion(build(), batch)
        in_warmup = epoch is not None and epoch < 4
        assert calls == (warm if in_warmup else tal), epoch
        assert criterion.in_warmup() is in_warmup


def test_atss_epochs_zero_disables_warmup():
    """atss_epochs: 0 -> TAL from epoch 0, as a third of a 1-epoch run (rounds to 0)."""
    head = FakeHead()
    head.epoch = 0
    assert not TOODLoss(FakeModel(head, atss_epochs=0)).in_warmup()
    assert not TOODLoss(FakeModel(head, epochs=1)).in_warmup()


def test_explicit_atss_epochs_without_callbacks_and_unresolved_fraction():
    """A head whose epoch is set by hand on a model without train arguments: an explicit atss_epochs is used, and a
    fraction of 0 is no warm-up at any length; another fraction cannot be resolved without the run's epochs, which is
    one clear error rather than a silent phase."""
    head = FakeHead()
    head.epoch = 3
    assert TOODLoss(FakeModel(head, epochs=None, atss_epochs=4)).in_warmup()
    assert TOODLoss(FakeModel(head, epochs=None, atss_fraction=0.0)).warmup_epochs() == 0
    with pytest.raises(RuntimeError, match="run's length is unknown"):
        TOODLoss(FakeModel(head, epochs=None)).in_warmup()
    head.epoch = None
    assert not TOODLoss(FakeModel(head, epochs=None)).in_warmup()  # outside training: TAL, nothing to resolve


def test_tuple_predictions_and_missing_epoch_attribute():
    """A (inference, dict) tuple is parsed like v8DetectionLoss; a head without ``epoch`` means TAL."""
    head = FakeHead()
    del head.epoch
    criterion = TOODLoss(FakeModel(head))
    assert not criterion.in_warmup()
    _, _, build = random_preds(1, 3, 16, 64)
    batch = random_batch([3], 3)
    preds = build()
    torch.testing.assert_close(criterion((torch.zeros(1), preds), batch)[0], criterion(preds, batch)[0])


def test_with_the_real_head():
    """TOODLoss on yolo_tood.head.TOODDetect's training output: finite loss and head gradients in both phases."""
    head_module = pytest.importorskip("yolo_tood.nn.head")
    torch.manual_seed(0)
    head = head_module.TOODDetect(nc=3, feat_channels=16, stacked_convs=2, ch=(8, 16, 32))
    head.stride = torch.tensor(STRIDES)
    head.train()
    criterion = TOODLoss(FakeModel(head, atss_epochs=1))
    x = [torch.randn(2, c, 64 // int(s), 64 // int(s)) for c, s in zip((8, 16, 32), STRIDES)]
    for epoch in (0, None):
        head.epoch = epoch
        head.zero_grad()
        out = head(x)
        loss, items = criterion(out, random_batch([2, 3], 3))
        assert torch.isfinite(loss).all()
        loss.sum().backward()
        grads = [p.grad for p in head.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)


def plain_reference(criterion: TOODLoss, preds: dict, batch: dict, warmup: bool) -> torch.Tensor:
    """The loss (3,) * B written plainly from the assignment, indexing the positives (the dense loss must equal it):
    mmdet's normalisers, the DFL / L1 targets measured from TAP's shifted points, ultralytics' L1 for reg_max 1."""
    from ultralytics.utils.metrics import bbox_iou
    from ultralytics.utils.tal import make_anchors

    head, bs = criterion.head, preds["scores"].shape[0]
    imgsz = torch.tensor([preds["feats"][0].shape[2] * STRIDES[0]] * 2)
    anc, stride = make_anchors(preds["feats"], head.stride, 0.5)  # (A, 2) grid units, (A, 1)
    gt_labels, gt_bboxes, mask_gt = criterion._targets(batch, bs, imgsz)
    r = head.reg_max
    dist = preds["boxes"].permute(0, 2, 1).reshape(bs, -1, 4, r)
    ltrb = dist.softmax(-1) @ torch.arange(float(r)) if r > 1 else dist[..., 0]  # (B, A, 4) distances
    o = preds["offsets"].permute(0, 2, 1)  # (B, A, 8): (dy, dx) per side
    start = torch.stack(
        (anc[:, 0] + o[..., 1], anc[:, 1] + o[..., 2], anc[:, 0] + o[..., 5], anc[:, 1] + o[..., 6]), -1
    )
    pred_boxes = start + ltrb * torch.tensor([-1.0, -1.0, 1.0, 1.0])  # (B, A, 4) xyxy grid units
    scores = preds["scores"].permute(0, 2, 1)
    if warmup:
        res = criterion.atss_assigner(anc * stride, stride, gt_labels, gt_bboxes, mask_gt, head.nc)
    else:
        res = criterion.tal_assigner(scores, pred_boxes * stride, anc * stride, gt_labels, gt_bboxes, mask_gt)
    fg = res.fg_mask
    target = torch.zeros_like(scores)
    target[fg, res.labels[fg]] = res.metrics[fg]
    hyp = criterion.tood_hyp
    if warmup:
        cls = focal_loss_prob(scores, target, hyp.focal_gamma, hyp.focal_alpha)
    else:
        cls = quality_focal_loss_prob(scores, target, hyp.qfl_beta)
    cls = cls.sum() / res.metrics.sum().clamp(min=1)
    tbox = res.bboxes[fg] / stride.expand(bs, -1, -1)[fg]  # (P, 4) grid units
    w = centerness(anc.expand(bs, -1, -1)[fg], tbox) if warmup else res.metrics[fg]
    giou = bbox_iou(pred_boxes[fg], tbox, xywh=False, GIoU=True).squeeze(-1)
    box = ((1 - giou) * w).sum() / w.sum().clamp(min=1)
    dist_target = (start[fg] - tbox) * torch.tensor([1.0, 1.0, -1.0, -1.0])  # (P, 4) l, t, r, b
    if r > 1:
        per_box = loss_module.DFLoss(r)(dist[fg].reshape(-1, r), dist_target.clamp(0, r - 1.01)).squeeze(-1)
    else:  # ultralytics' L1 on the distances / image size (w, h, w, h), mean over the sides
        scale = stride.expand(bs, -1, -1)[fg] / imgsz.flip(0).repeat(2)
        per_box = ((ltrb[fg] - dist_target) * scale).abs().mean(-1)
    dfl = (per_box * w).sum() / w.sum().clamp(min=1)
    hyp = criterion.tood_hyp
    return torch.stack((box * hyp.box_gain, cls * hyp.cls_gain, dfl * hyp.dfl_gain)) * bs


@pytest.mark.parametrize("reg_max", [16, 1])
@pytest.mark.parametrize("epoch", [0, None])
def test_dense_loss_equals_the_plain_reference_with_an_image_without_gt(epoch, reg_max):
    """The loss, computed over all anchors with weights that vanish at the background, equals the loss written from
    the positives alone, in both phases, with DFL and with L1, with TAP's offsets and an image that has no GT; its
    gradients are finite (the background's targets are harmless boxes, so no 0 * NaN reaches them)."""
    head = FakeHead(nc=3, reg_max=reg_max)
    head.epoch = epoch
    criterion = TOODLoss(FakeModel(head, atss_epochs=1))
    boxes, logits, build = random_preds(3, 3, reg_max, 128, seed=7, offset_std=0.5)
    batch = random_batch([4, 0, 6], 3, seed=8)
    preds = build()
    loss, items = criterion(preds, batch)
    torch.testing.assert_close(loss, plain_reference(criterion, preds, batch, epoch == 0), atol=1e-5, rtol=1e-5)
    assert_finite_loss_and_grads(loss, items, boxes, logits)


def test_side_shift_pairs_is_a_view_of_side_shifts():
    """The loss's view of TAP's side shifts holds side_shifts' channels, (x1, y1) then (x2, y2), without a copy."""
    offsets = torch.randn(2, 8, 5)
    pairs = loss_module.side_shift_pairs(offsets)
    assert pairs.shape == (2, 5, 2, 2) and pairs.data_ptr() == offsets[:, 1].data_ptr()
    torch.testing.assert_close(pairs.flatten(2), side_shifts(offsets).permute(0, 2, 1))


@pytest.mark.parametrize("epoch", [0, None])
def test_training_step_of_the_loss_makes_three_host_syncs(epoch):
    """A training loss call and its backward wait for the device three times (``scripts/bench_launches.py``'s rule):
    the read of the label checks and ultralytics' ``preprocess``'s two (the GT counts and their max); the assignment
    statistics, the normalisers and the positives (never indexed) add none. A second call reuses the anchors."""
    head = FakeHead(nc=3)
    head.epoch = epoch
    criterion = TOODLoss(FakeModel(head, atss_epochs=1))
    boxes, logits, build = random_preds(2, 3, 16, 64, seed=9, offset_std=0.3)
    batch = random_batch([3, 5], 3, seed=10)
    criterion(build(), batch)  # the first call makes the cached anchors (make_anchors reads the strides)
    with load_script("bench_launches").count() as c:
        loss, _ = criterion(build(), batch)
        loss.sum().backward()
    assert c.syncs == 3 and set(c.sync_ops) == {"Tensor.tolist", "_unique2", "_local_scalar_dense"}, c.sync_ops
    assert criterion.tal_stats.summary()["gts"] == 16  # the statistics were fed (both calls)


# ----------------------------------------------------------------------------------------------------------------------
# TOODHyp
# ----------------------------------------------------------------------------------------------------------------------


def test_hyp_defaults_and_yaml():
    """Defaults are the paper / mmdet recipe; YAML keys override them; other keys are ignored; ints become floats."""
    hyp = TOODHyp.from_yaml({"nc": 80, "scales": {}, "tal_beta": 4, "atss_epochs": 0})
    assert hyp == TOODHyp(tal_beta=4.0, atss_epochs=0)
    assert isinstance(hyp.tal_beta, float)
    d = TOODHyp.from_yaml(None)
    assert (d.tal_topk, d.tal_alpha, d.tal_beta, d.atss_epochs, d.atss_topk) == (13, 1.0, 6.0, None, 9)
    assert d.atss_fraction == 1 / 3
    assert (d.qfl_beta, d.focal_gamma, d.focal_alpha) == (2.0, 2.0, 0.25)
    assert (d.box_gain, d.cls_gain, d.dfl_gain) == (2.0, 1.0, 0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.tal_topk = 3


@pytest.mark.parametrize(
    "key, value",
    [
        ("tal_topk", 0),
        ("tal_topk", 2.5),
        ("tal_topk", "13"),
        ("tal_topk", True),
        ("atss_topk", -1),
        ("atss_epochs", -1),
        ("atss_epochs", 1.5),
        ("atss_fraction", 1.0),
        ("atss_fraction", -0.1),
        ("atss_fraction", "0.3"),
        ("atss_fraction", None),
        ("atss_fraction", True),
        ("atss_fraction", float("nan")),
        ("tal_alpha", -0.5),
        ("tal_beta", "6"),
        ("tal_beta", float("nan")),
        ("qfl_beta", -1),
        ("focal_gamma", None),
        ("focal_alpha", 1.5),
        ("box_gain", -1.0),
        ("cls_gain", float("inf")),
        ("dfl_gain", [0.5]),
    ],
)
def test_hyp_validation(key, value):
    """Bad types and ranges raise one ValueError line that names the key."""
    with pytest.raises(ValueError, match=key) as e:
        TOODHyp.from_yaml({key: value})
    assert "\n" not in str(e.value)


def test_hyp_from_yaml_rejects_a_non_dict():
    """A model YAML that is not a dict is an error, not silently the defaults."""
    with pytest.raises(ValueError, match="dict"):
        TOODHyp.from_yaml([1, 2])


@pytest.mark.parametrize(
    "yaml_keys, epochs, expected",
    [
        ({}, 1, 0),  # short runs (tests, demo): round(1/3) = 0, no warm-up
        ({}, 10, 3),
        ({}, 12, 4),  # the paper's 4 of 12
        ({}, 60, 20),
        ({"atss_fraction": 0.333}, 60, 20),  # the YAML's value
        ({"atss_fraction": 0}, 60, 0),
        ({"atss_fraction": 0.5}, 5, 3),  # halves round up
        ({"atss_fraction": 0.5}, 3, 2),
        ({"atss_fraction": 1 / 6}, 60, 10),
        ({"atss_epochs": 4}, 60, 4),  # an explicit count overrides the fraction
        ({"atss_epochs": 4, "atss_fraction": 0.5}, 60, 4),
        ({"atss_epochs": None}, 60, 20),  # YAML null: the fraction
    ],
)
def test_warmup_epochs_resolution(yaml_keys, epochs, expected):
    assert TOODHyp.from_yaml(yaml_keys).warmup_epochs(epochs) == expected


def test_describe_warmup():
    assert TOODHyp(atss_fraction=0.333).describe_warmup(60) == (
        "TOOD: ATSS warm-up for epochs 1-20 of 60 (atss_fraction 0.333), then TAL"
    )
    assert (
        TOODHyp(atss_epochs=4).describe_warmup(60)
        == "TOOD: ATSS warm-up for epochs 1-4 of 60 (atss_epochs 4), then TAL"
    )
    assert TOODHyp().describe_warmup(1) == "TOOD: no ATSS warm-up (atss_fraction 0.333 of 1 epochs), TAL from epoch 1"


def test_check_warmup(monkeypatch):
    """A warning when the resolved ATSS warm-up is at least as long as the training, none otherwise."""
    messages = []
    monkeypatch.setattr(LOGGER, "warning", lambda msg, *a, **k: messages.append(msg))
    assert check_warmup(TOODHyp(atss_epochs=4), epochs=100)
    assert check_warmup(TOODHyp(), epochs=1)
    assert not messages
    assert not check_warmup(TOODHyp(atss_epochs=4), epochs=4)
    assert len(messages) == 1 and "atss_epochs=4" in messages[0] and "epochs=4" in messages[0]
    assert not check_warmup(TOODHyp(atss_fraction=0.9), epochs=1)  # round(0.9) = 1: the whole run
    assert len(messages) == 2 and "atss_fraction=0.9" in messages[1]


def test_check_warmup_reports_a_short_explicit_warm_up(monkeypatch):
    """An explicit warm-up shorter than a third of the schedule is logged as information (pointing to the default
    fraction); the fraction itself and 0 (disabled) are not."""
    infos = []
    monkeypatch.setattr(LOGGER, "info", lambda msg, *a, **k: infos.append(msg))
    assert check_warmup(TOODHyp(atss_epochs=4), epochs=60)
    assert len(infos) == 1 and "4 of 60 epochs" in infos[0] and "atss_fraction" in infos[0]
    for hyp, epochs in ((TOODHyp(atss_epochs=20), 60), (TOODHyp(atss_epochs=4), 12), (TOODHyp(atss_epochs=0), 60)):
        assert check_warmup(hyp, epochs=epochs)
    for fraction in (0.1, 1 / 6, 1 / 3):
        assert check_warmup(TOODHyp(atss_fraction=fraction), epochs=60)
    assert len(infos) == 1
