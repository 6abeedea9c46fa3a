"""``tal_min_size``: GT sides below a floor are widened for the centre-in-GT test only (as ultralytics' STAL)."""

from __future__ import annotations

import pytest
import torch
from test_loss import FakeHead, FakeModel

from yolo_tood.train.assigner import ATSSAssigner, TOODTaskAlignedAssigner, widen_small_boxes
from yolo_tood.train.hyp import TOODHyp


def grid_anchors(size: int = 64, stride: float = 8.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Anchor centres of one stride-8 level of a ``size`` px image (as make_anchors * stride) and their strides."""
    n = int(size // stride)
    ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    anc = (torch.stack((xs.flatten(), ys.flatten()), 1).float() + 0.5) * stride  # centres at 4, 12, 20, ...
    return anc, torch.full((anc.shape[0], 1), stride)


def test_widen_small_boxes_by_hand():
    boxes = torch.tensor([[10.0, 10.0, 14.0, 40.0], [0.0, 0.0, 20.0, 20.0], [5.0, 5.0, 5.0, 5.0]])
    assert widen_small_boxes(boxes, 16.0).tolist() == [
        [4.0, 10.0, 20.0, 40.0],  # width 4 -> 16 about x = 12; height 30 kept
        [0.0, 0.0, 20.0, 20.0],  # both sides above the floor: unchanged
        [-3.0, -3.0, 13.0, 13.0],  # a point becomes a 16 px square about itself
    ]
    assert widen_small_boxes(boxes, 0.0) is boxes  # off: the reference's box, untouched


# a 5 x 5 px GT between the anchor centres 12 and 20: no centre inside it
TINY_GT = torch.tensor([[[13.0, 13.0, 18.0, 18.0]]])


def tal_scene(anc: torch.Tensor) -> tuple:
    """Every anchor predicts the tiny GT's box, with a score falling with its distance to the GT: the top-13
    candidates are the 13 anchors nearest the GT, and the metric is positive everywhere."""
    a = anc.shape[0]
    scores = torch.exp(-(anc - 15.5).norm(dim=1) / 10)[None, :, None]  # (1, A, 1)
    pboxes = (TINY_GT[0, 0] + torch.zeros(a, 4))[None]
    return scores, pboxes, anc, torch.zeros(1, 1, 1), TINY_GT, torch.ones(1, 1, 1)


def test_tiny_gt_gets_positives_only_with_the_floor():
    anc, strides = grid_anchors()
    strict = TOODTaskAlignedAssigner.from_hyp(topk=13)(*tal_scene(anc))
    assert int(strict.fg_mask.sum()) == 0  # the reference: no anchor centre inside 13..18
    widened = TOODTaskAlignedAssigner.from_hyp(topk=13, min_size=16.0)(*tal_scene(anc))
    pos = anc[widened.fg_mask[0]]
    # widened to 7.5..23.5 on both axes: the centres 12 and 20 on each axis are inside -> 4 positives
    assert sorted(map(tuple, pos.tolist())) == [(12.0, 12.0), (12.0, 20.0), (20.0, 12.0), (20.0, 20.0)]
    assert torch.equal(widened.bboxes[widened.fg_mask], TINY_GT[0].expand(4, 4))  # the target is the real box

    atss = ATSSAssigner.from_hyp(topk=9)(
        anc, strides, torch.zeros(1, 1, 1), TINY_GT, torch.ones(1, 1, 1), num_classes=1
    )
    assert int(atss.fg_mask.sum()) == 0
    atss = ATSSAssigner.from_hyp(topk=9, min_size=16.0)
    res = atss(anc, strides, torch.zeros(1, 1, 1), TINY_GT, torch.ones(1, 1, 1), num_classes=1)
    assert int(res.fg_mask.sum()) > 0


def test_floor_does_not_change_large_gts():
    anc, _ = grid_anchors()
    gt = torch.tensor([[[6.0, 6.0, 40.0, 30.0]]])  # both sides above 16 px
    g = torch.Generator().manual_seed(0)
    scene = (torch.rand(1, anc.shape[0], 1, generator=g), (gt[0, 0] + torch.zeros(anc.shape[0], 4))[None], anc,
             torch.zeros(1, 1, 1), gt, torch.ones(1, 1, 1))  # fmt: skip
    a, b = TOODTaskAlignedAssigner.from_hyp()(*scene), TOODTaskAlignedAssigner.from_hyp(min_size=16.0)(*scene)
    assert torch.equal(a.fg_mask, b.fg_mask) and torch.equal(a.metrics, b.metrics)


def test_key_reaches_both_assigners_and_is_checked():
    from yolo_tood.train.loss import TOODLoss

    assert TOODHyp().tal_min_size == 0.0  # the reference by default
    crit = TOODLoss(FakeModel(FakeHead(), tal_min_size=16))
    assert crit.tal_assigner.min_size == 16.0 and crit.atss_assigner.min_size == 16.0
    with pytest.raises(ValueError, match="tal_min_size"):
        TOODHyp(tal_min_size=-1.0)


def bimodal_scene() -> tuple:
    """A 186 x 179 px GT centred in a 320 px image with 3 levels (strides 8/16/32): its 27 ATSS candidate IoUs are
    bimodal (P3 anchors ~0.12, P4/P5 ~0.5), and mean + std lies above every one of them."""
    anc, strides = [], []
    for s in (8.0, 16.0, 32.0):
        a, st = grid_anchors(320, s)
        anc.append(a)
        strides.append(st)
    gt = torch.tensor([[[67.0, 70.5, 253.0, 249.5]]])
    return torch.cat(anc), torch.cat(strides), torch.zeros(1, 1, 1), gt, torch.ones(1, 1, 1)


def test_atss_min_pos_keeps_the_best_inside_candidates():
    from ultralytics.utils.metrics import bbox_iou

    anc, strides, labels, gt, mask = bimodal_scene()
    ref = ATSSAssigner.from_hyp(topk=9)(anc, strides, labels, gt, mask, num_classes=1)
    assert int(ref.fg_mask.sum()) == 0  # the reference's threshold leaves this large GT without a positive
    half = strides * 4
    iou = bbox_iou(gt[0], torch.cat((anc - half, anc + half), 1), xywh=False).squeeze(-1)  # (A,) anchor-box IoU
    inside = ((anc > gt[0, 0, :2]) & (anc < gt[0, 0, 2:])).all(1)
    best = iou.masked_fill(~inside, -1).max()  # 0.508: four P5 anchors around the centre tie
    res = ATSSAssigner.from_hyp(topk=9, min_pos=1)(anc, strides, labels, gt, mask, num_classes=1)
    kept = res.fg_mask[0]
    assert int(kept.sum()) == 4 and bool((iou[kept] == best).all()) and bool(inside[kept].all())  # ties kept
    res = ATSSAssigner.from_hyp(topk=9, min_pos=5)(anc, strides, labels, gt, mask, num_classes=1)
    assert int(res.fg_mask.sum()) >= 5 and bool(inside[res.fg_mask[0]].all())


def test_atss_min_pos_changes_nothing_where_the_reference_has_positives():
    anc, strides = grid_anchors(64)
    gt = torch.tensor([[[6.0, 6.0, 40.0, 30.0], [30.0, 30.0, 60.0, 62.0]]])
    args = (anc, strides, torch.zeros(1, 2, 1), gt, torch.ones(1, 2, 1))
    ref, res = (
        ATSSAssigner.from_hyp(topk=9)(*args, num_classes=1),
        ATSSAssigner.from_hyp(topk=9, min_pos=1)(*args, num_classes=1),
    )
    assert int(ref.fg_mask.sum()) >= 2 and torch.equal(ref.fg_mask, res.fg_mask) and torch.equal(ref.gt_idx, res.gt_idx)


def test_atss_min_pos_key():
    from yolo_tood.train.loss import TOODLoss

    assert TOODHyp().atss_min_pos == 0  # the reference by default
    assert TOODLoss(FakeModel(FakeHead(), atss_min_pos=2)).atss_assigner.min_pos == 2
    with pytest.raises(ValueError, match="atss_min_pos"):
        TOODHyp(atss_min_pos=-1)
