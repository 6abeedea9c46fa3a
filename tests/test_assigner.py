"""Tests of yolo_tood.assigner: TOOD's task-aligned assigner (TAL) and the ATSS warm-up assigner."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from ultralytics.utils.metrics import bbox_iou
from ultralytics.utils.tal import TaskAlignedAssigner, make_anchors

from yolo_tood.train.assigner import (
    ATSSAssigner,
    TOODTaskAlignedAssigner,
    centers_inside,
    flat_anchor_ids,
    resolve_claims,
)

STRIDES = (8.0, 16.0, 32.0)
PROPERTY = settings(max_examples=25, deadline=None)


def grid_anchors(imgsz: int, strides=STRIDES) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ultralytics' anchor points (A, 2) in pixels and strides (A, 1) for a square image."""
    sizes = torch.tensor([[imgsz // int(s), imgsz // int(s)] for s in strides])
    anc, stride_tensor = make_anchors(sizes, torch.tensor(strides), 0.5)
    return anc * stride_tensor, stride_tensor


def random_case(seed: int, bs: int, n_max: int, imgsz: int = 64, nc: int = 3) -> dict:
    """Return a random padded batch: GTs partly outside the image, some of zero area; boxes around every anchor."""
    g = torch.Generator().manual_seed(seed)
    anc, stride_tensor = grid_anchors(imgsz)
    na = anc.shape[0]
    counts = torch.randint(0, n_max + 1, (bs,), generator=g)
    ctr = torch.rand(bs, n_max, 2, generator=g) * (imgsz + 16) - 8
    wh = torch.exp(torch.rand(bs, n_max, 2, generator=g) * torch.log(torch.tensor(float(imgsz))))  # 1 .. imgsz
    wh = wh * (torch.rand(bs, n_max, 1, generator=g) > 0.1)  # about 10% zero-area GTs
    gt_bboxes = torch.cat((ctr - wh / 2, ctr + wh / 2), -1)
    mask_gt = (torch.arange(n_max)[None] < counts[:, None]).float()[..., None]  # (bs, n_max, 1)
    gt_bboxes = gt_bboxes * mask_gt  # padding is zeros, as ultralytics' preprocess
    gt_labels = torch.randint(0, nc, (bs, n_max, 1), generator=g).float() * mask_gt
    dist = torch.rand(bs, na, 4, generator=g) * 3 * stride_tensor.view(1, -1, 1)
    pd_bboxes = torch.cat((anc - dist[..., :2], anc + dist[..., 2:]), -1)
    pd_scores = torch.rand(bs, na, nc, generator=g)
    return dict(
        pd_scores=pd_scores,
        pd_bboxes=pd_bboxes,
        anc=anc,
        strides=stride_tensor,
        gt_labels=gt_labels,
        gt_bboxes=gt_bboxes,
        mask_gt=mask_gt,
        counts=counts,
        nc=nc,
    )


def run_tal(case: dict, assigner: TOODTaskAlignedAssigner):
    """Run the TAL assigner on a random case."""
    c = case
    return assigner(c["pd_scores"], c["pd_bboxes"], c["anc"], c["gt_labels"], c["gt_bboxes"], c["mask_gt"])


def run_atss(case: dict, assigner: ATSSAssigner):
    """Run the ATSS assigner on a random case."""
    c = case
    return assigner(c["anc"], c["strides"], c["gt_labels"], c["gt_bboxes"], c["mask_gt"], c["nc"])


def reference_tal(scores, pboxes, anc, labels, boxes, topk, alpha, beta):
    """Dense, loop-based MMDetection TaskAlignedAssigner semantics for one image: (gt index or -1, t_hat, IoU) per
    anchor. Written for clarity, not memory: the full (n, A) metric, top-k over all anchors, then the filters."""
    na, n = anc.shape[0], boxes.shape[0]
    gt_idx, t_hat, ious = torch.full((na,), -1), torch.zeros(na), torch.zeros(na)
    if n == 0:
        return gt_idx, t_hat, ious
    iou = bbox_iou(boxes[:, None], pboxes[None], xywh=False).squeeze(-1)  # (n, A)
    metric = scores[:, labels].t() ** alpha * iou**beta  # (n, A)
    pos = torch.zeros(n, na, dtype=torch.bool)
    for j in range(n):
        for a in metric[j].topk(min(topk, na)).indices.tolist():
            x, y = anc[a].tolist()
            x1, y1, x2, y2 = boxes[j].tolist()
            pos[j, a] = metric[j, a] > 0 and min(x - x1, y - y1, x2 - x, y2 - y) > 0.01
    for a in range(na):
        claimants = pos[:, a].nonzero().flatten().tolist()
        if claimants:
            gt_idx[a] = max(claimants, key=lambda j: (iou[j, a].item(), -j))  # highest IoU, then lowest index
    for j in range(n):
        mine = (gt_idx == j).nonzero().flatten()
        if len(mine):
            t, u = metric[j, mine], iou[j, mine]
            t_hat[mine] = t / t.max() * u.max()
            ious[mine] = u
    return gt_idx, t_hat, ious


def reference_atss(anc, strides, boxes, topk, anchor_scale=8.0):
    """Dense, loop-based MMDetection ATSSAssigner semantics for one image: (gt index or -1, IoU) per anchor."""
    na, n = anc.shape[0], boxes.shape[0]
    gt_idx, ious = torch.full((na,), -1), torch.zeros(na)
    if n == 0:
        return gt_idx, ious
    half = strides.view(-1, 1) * anchor_scale / 2
    anchor_boxes = torch.cat((anc - half, anc + half), 1)
    iou = bbox_iou(boxes[:, None], anchor_boxes[None], xywh=False).squeeze(-1)  # (n, A)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    dist = ((centre[:, None] - anc[None]) ** 2).sum(-1)  # (n, A) squared distances
    pos = torch.zeros(n, na, dtype=torch.bool)
    for j in range(n):
        cand = []
        for s in strides.view(-1).unique():
            level = (strides.view(-1) == s).nonzero().flatten()
            cand += level[dist[j, level].topk(min(topk, len(level)), largest=False).indices].tolist()
        u = iou[j, cand]
        thr = u.mean() + u.std()
        for a, ua in zip(cand, u.tolist()):
            x, y = anc[a].tolist()
            x1, y1, x2, y2 = boxes[j].tolist()
            pos[j, a] = ua >= thr and min(x - x1, y - y1, x2 - x, y2 - y) > 0.01
    for a in range(na):
        claimants = pos[:, a].nonzero().flatten().tolist()
        if claimants:
            gt_idx[a] = max(claimants, key=lambda j: (iou[j, a].item(), -j))
            ious[a] = iou[gt_idx[a], a]
    return gt_idx, ious


# ----------------------------------------------------------------------------------------------------------------------
# Hand-computed cases
# ----------------------------------------------------------------------------------------------------------------------

ROW_ANCHORS = torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [28.0, 4.0]])  # a0..a3, one row of stride-8 cells
ROW_GTS = torch.tensor([[[0.0, 0.0, 16.0, 8.0], [8.0, 0.0, 32.0, 8.0]]])  # GT0 (class 0) holds a0, a1; GT1 (1) a1-a3
ROW_LABELS = torch.tensor([[[0.0], [1.0]]])
ROW_PRED = torch.tensor([[[0.0, 0, 16, 8], [8, 0, 16, 8], [8, 0, 32, 8], [16, 0, 32, 8]]])  # predicted boxes a0..a3
ROW_SCORES = torch.tensor([[[0.8, 0.1], [0.6, 0.9], [0.2, 0.5], [0.3, 0.4]]])  # (1, 4, nc=2) probabilities


def test_tal_hand_computed():
    """Two GTs, four anchors, alpha=1, beta=2, topk=3.

    IoU u (pred box vs GT), areas GT0 128, GT1 192:
        a0 [0,0,16,8]:  GT0 1,     GT1 64/256 = 0.25
        a1 [8,0,16,8]:  GT0 64/128 = 0.5, GT1 64/192 = 1/3
        a2 [8,0,32,8]:  GT0 64/256 = 0.25, GT1 1
        a3 [16,0,32,8]: GT0 0,     GT1 128/192 = 2/3
    t = s * u^2:
        GT0 (class 0): a0 0.8, a1 0.6*0.25 = 0.15, a2 0.2*0.0625 = 0.0125, a3 0   -> top-3 a0, a1, a2;
                       a2's centre (20, 4) is outside GT0 -> positives a0, a1
        GT1 (class 1): a0 0.1*0.0625 = 0.00625, a1 0.9/9 = 0.1, a2 0.5, a3 0.4*4/9 = 0.17778 -> top-3 a2, a3, a1,
                       all inside GT1 -> positives a1, a2, a3
    a1 is claimed by both: IoU 0.5 (GT0) > 1/3 (GT1) -> GT0.
    t_hat = t / max t * max u over the final positives:
        GT0 {a0, a1}: max t 0.8, max u 1 -> a0 1.0, a1 0.15 / 0.8 = 0.1875
        GT1 {a2, a3}: max t 0.5, max u 1 -> a2 1.0, a3 0.17778 / 0.5 = 0.35556
    """
    res = TOODTaskAlignedAssigner.from_hyp(topk=3, alpha=1.0, beta=2.0)(
        ROW_SCORES, ROW_PRED, ROW_ANCHORS, ROW_LABELS, ROW_GTS, torch.ones(1, 2, 1)
    )
    assert res.fg_mask.tolist() == [[True, True, True, True]]
    assert res.gt_idx.tolist() == [[0, 0, 1, 1]]
    assert res.labels.tolist() == [[0, 0, 1, 1]]
    torch.testing.assert_close(res.bboxes[0], ROW_GTS[0][[0, 0, 1, 1]])
    torch.testing.assert_close(res.metrics[0], torch.tensor([1.0, 0.1875, 1.0, 0.32 / 0.9]), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.ious[0], torch.tensor([1.0, 0.5, 1.0, 2 / 3]), atol=1e-6, rtol=1e-5)


def test_tal_topk_counts_anchors_outside_the_gt():
    """MMDetection's top-k runs over ALL anchors: an outside anchor with a high metric takes a slot, then is dropped.

    Same row, topk=2, but a2 predicts GT0 exactly ([0,0,16,8], u = 1) with score 0.9 for class 0, so for GT0:
    t(a2) = 0.9 > t(a0) = 0.8 > t(a1) = 0.15 -> top-2 = a2, a0; a2 is outside GT0 -> GT0 keeps only a0 (t_hat 1.0).
    (ultralytics' assigner, which ranks only anchors inside the GT, would also keep a1.)
    GT1: t = a0 0.1 * 0.25^2, a1 0.9 / 9 = 0.1, a2 0.5 * 0.25^2 = 0.03125, a3 0.17778 -> top-2 a3, a1 (inside):
    a1 is now GT1's alone; t_hat a3 = 1.0 * max u (2/3), a1 = 0.1 / 0.17778 * 2/3 = 0.375.
    """
    pred = ROW_PRED.clone()
    pred[0, 2] = torch.tensor([0.0, 0, 16, 8])
    scores = ROW_SCORES.clone()
    scores[0, 2, 0] = 0.9
    res = TOODTaskAlignedAssigner.from_hyp(topk=2, alpha=1.0, beta=2.0)(
        scores, pred, ROW_ANCHORS, ROW_LABELS, ROW_GTS, torch.ones(1, 2, 1)
    )
    assert res.gt_idx.tolist() == [[0, 1, -1, 1]]
    torch.testing.assert_close(res.metrics[0], torch.tensor([1.0, 0.375, 0.0, 2 / 3]), atol=1e-6, rtol=1e-5)


def test_tal_padding_and_no_gt():
    """Padded GTs are never assigned; a batch without GTs (n_max = 0) or with only padding is all background."""
    mask = torch.tensor([[[1.0], [0.0]]])  # GT1 is padding
    res = TOODTaskAlignedAssigner.from_hyp(topk=3, alpha=1.0, beta=2.0)(
        ROW_SCORES, ROW_PRED, ROW_ANCHORS, ROW_LABELS, ROW_GTS, mask
    )
    assert res.gt_idx.tolist() == [[0, 0, -1, -1]]
    for gt_bboxes, mask_gt in ((torch.zeros(1, 0, 4), torch.zeros(1, 0, 1)), (ROW_GTS, torch.zeros(1, 2, 1))):
        labels = ROW_LABELS[:, : gt_bboxes.shape[1]]
        res = TOODTaskAlignedAssigner.from_hyp()(ROW_SCORES, ROW_PRED, ROW_ANCHORS, labels, gt_bboxes, mask_gt)
        assert not res.fg_mask.any() and (res.gt_idx == -1).all() and (res.labels == 2).all()
        assert res.metrics.abs().sum() == 0 and res.bboxes.abs().sum() == 0


def test_atss_hand_computed():
    """One level, stride 8, 4x4 anchors at 4, 12, 20, 28; anchor_scale=1 (8x8 anchor boxes), topk=3.

    GT0 [0,0,14,14] (class 0), centre (7,7): nearest anchors (4,4) d^2=18, (12,4) and (4,12) d^2=34 (next (12,12) 50).
        IoUs with the anchor boxes: [0,0,8,8] 64/196 = 0.32653; [8,0,16,8] 48/(64+196-48) = 0.22642; same for (4,12).
        mean 0.25979, std (unbiased) sqrt((0.06674^2 + 2 * 0.03337^2) / 2) = 0.05780 -> thr 0.31759:
        only (4,4) (index 0) passes, and its centre is inside.
    GT1 [0,0,10,10] (class 1), centre (5,5): nearest (4,4) d^2=2, (12,4) and (4,12) d^2=50 (next (12,12) 98).
        IoUs: [0,0,8,8] 64/100 = 0.64; [8,0,16,8] 16/(64+100-16) = 0.10811 (twice); mean 0.28541,
        std (0.64 - 0.10811)/sqrt(3) = 0.30709 -> thr 0.59250: only (4,4) passes.
    Anchor 0 is claimed by both: IoU 0.64 (GT1) > 0.32653 (GT0) -> GT1; GT0 ends with no positive.
    With GT1 masked out as padding, anchor 0 goes to GT0 with IoU 0.32653.
    """
    anc, strides = grid_anchors(32, strides=(8.0,))
    gts = torch.tensor([[[0.0, 0.0, 14.0, 14.0], [0.0, 0.0, 10.0, 10.0]]])
    labels = torch.tensor([[[0.0], [1.0]]])
    assigner = ATSSAssigner.from_hyp(topk=3, anchor_scale=1.0)
    res = assigner(anc, strides, labels, gts, torch.ones(1, 2, 1), num_classes=2)
    assert res.fg_mask[0].nonzero().flatten().tolist() == [0]
    assert res.gt_idx[0, 0] == 1 and res.labels[0, 0] == 1
    assert res.labels[0, 1:].eq(2).all()
    torch.testing.assert_close(res.ious[0, 0], torch.tensor(0.64), atol=1e-5, rtol=1e-5)
    assert res.metrics[0, 0] == 1.0 and res.metrics[0, 1:].eq(0).all()

    res = assigner(anc, strides, labels, gts, torch.tensor([[[1.0], [0.0]]]), num_classes=2)
    assert res.fg_mask[0].nonzero().flatten().tolist() == [0] and res.gt_idx[0, 0] == 0
    torch.testing.assert_close(res.ious[0, 0], torch.tensor(64 / 196), atol=1e-5, rtol=1e-5)


def test_atss_default_anchor_box_is_eight_strides():
    """The default ATSS anchor box is a square of side 8 * stride (mmdet octave_base_scale=8).

    A 64x64 GT centred on the stride-8 anchor (36, 36): its 64x64 anchor box coincides with the GT, IoU 1.
    """
    anc, strides = grid_anchors(128, strides=(8.0,))
    gts = torch.tensor([[[4.0, 4.0, 68.0, 68.0]]])
    res = ATSSAssigner.from_hyp()(anc, strides, torch.zeros(1, 1, 1), gts, torch.ones(1, 1, 1), num_classes=1)
    a = ((anc - 36).abs().sum(1) == 0).nonzero().item()
    assert res.fg_mask[0, a] and res.ious[0, a] > 0.999


def test_resolve_claims_ties_go_to_the_lowest_gt():
    """Exact IoU ties between claimants go to the lowest GT index; only claims compete; images never compete."""
    anchors = torch.tensor([[[5], [5], [5], [6]]])  # (1, 4, 1): GTs 0-2 claim anchor 5, GT3 anchor 6
    ious = torch.tensor([[[0.4], [0.5], [0.5], [0.1]]])
    claims = torch.ones(1, 4, 1, dtype=torch.bool)
    assert resolve_claims(anchors, ious, claims, 8).flatten().tolist() == [False, True, False, True]
    claims[0, 1] = False  # GT1 does not claim: GT2 wins alone
    assert resolve_claims(anchors, ious, claims, 8).flatten().tolist() == [False, False, True, True]
    two = flat_anchor_ids(anchors.expand(2, -1, -1), 8)  # the same anchors in two images: ids 5 and 13
    keep = resolve_claims(two, ious.expand(2, -1, -1), torch.ones(2, 4, 1, dtype=torch.bool), 16)
    assert keep.flatten(1).tolist() == [[False, True, False, True]] * 2


def test_centers_inside_margin():
    """A centre must be more than 0.01 px inside every side (mmdet's margin); on or near a side it is outside."""
    box = torch.tensor([0.0, 0.0, 10.0, 10.0])
    pts = torch.tensor([[5.0, 5.0], [0.0, 5.0], [0.005, 5.0], [0.02, 5.0], [10.0, 10.0]])
    assert centers_inside(pts, box).tolist() == [True, False, False, True, False]


# ----------------------------------------------------------------------------------------------------------------------
# Properties on random inputs
# ----------------------------------------------------------------------------------------------------------------------

CASES = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 2**31 - 1),
        "bs": st.integers(1, 3),
        "n_max": st.integers(0, 12),
        "topk": st.integers(1, 15),
        "alpha": st.sampled_from([0.5, 1.0, 1.5]),
        "beta": st.sampled_from([1.0, 2.0, 6.0]),
        "one_gt_per_chunk": st.booleans(),
    }
)


def _tal(p: dict) -> TOODTaskAlignedAssigner:
    assigner = TOODTaskAlignedAssigner.from_hyp(topk=p["topk"], alpha=p["alpha"], beta=p["beta"])
    if p["one_gt_per_chunk"]:
        assigner.chunk_elems = 1  # forces one GT per chunk: the chunked path must not change the result
    return assigner


@PROPERTY
@given(CASES)
def test_tal_properties(p):
    """Positives: one GT each, centre inside it; <= k per GT; targets in [0, 1]; max t_hat = max IoU per GT."""
    case = random_case(p["seed"], p["bs"], p["n_max"])
    res = run_tal(case, _tal(p))
    for b in range(p["bs"]):
        fg = res.fg_mask[b]
        assert torch.equal(fg, res.gt_idx[b] >= 0)
        assert (res.gt_idx[b][fg] < case["counts"][b]).all()  # never a padded GT
        boxes = case["gt_bboxes"][b, res.gt_idx[b][fg]]
        assert centers_inside(case["anc"][fg], boxes).all()
        assert torch.equal(res.bboxes[b][fg], boxes)
        assert torch.equal(res.labels[b][fg], case["gt_labels"][b, res.gt_idx[b][fg], 0].long())
        assert (res.labels[b][~fg] == case["nc"]).all() and (res.metrics[b][~fg] == 0).all()
        assert torch.bincount(res.gt_idx[b][fg], minlength=1).max() <= p["topk"]
        assert ((res.metrics[b] >= 0) & (res.metrics[b] <= 1)).all()
        assert ((res.ious[b] >= 0) & (res.ious[b] <= 1)).all()
        for j in res.gt_idx[b][fg].unique():
            mine = res.gt_idx[b] == j
            assert res.metrics[b][mine].max() == res.ious[b][mine].max()  # t_max / t_max * u_max is exact


@PROPERTY
@given(CASES)
def test_tal_matches_dense_reference(p):
    """The chunked, memory-lean assigner equals a dense loop-based port of MMDetection's semantics."""
    case = random_case(p["seed"], p["bs"], p["n_max"])
    res = run_tal(case, _tal(p))
    for b in range(p["bs"]):
        n = int(case["counts"][b])
        gt_idx, t_hat, ious = reference_tal(
            case["pd_scores"][b],
            case["pd_bboxes"][b],
            case["anc"],
            case["gt_labels"][b, :n, 0].long(),
            case["gt_bboxes"][b, :n],
            p["topk"],
            p["alpha"],
            p["beta"],
        )
        assert torch.equal(res.gt_idx[b], gt_idx)
        torch.testing.assert_close(res.metrics[b], t_hat, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(res.ious[b], ious, atol=1e-6, rtol=1e-5)


@PROPERTY
@given(CASES, st.randoms(use_true_random=False))
def test_tal_gt_permutation_equivariance(p, rnd):
    """Permuting the GTs of each image permutes the assigned indices and changes nothing else."""
    case = random_case(p["seed"], p["bs"], p["n_max"])
    perm = torch.arange(p["n_max"]).repeat(p["bs"], 1)  # (bs, n_max): new position j holds old GT perm[b, j]
    for b in range(p["bs"]):
        n = int(case["counts"][b])
        order = list(range(n))
        rnd.shuffle(order)
        perm[b, :n] = torch.tensor(order, dtype=torch.long)
    permuted = dict(case)
    for key in ("gt_labels", "gt_bboxes", "mask_gt"):
        permuted[key] = torch.stack([case[key][b, perm[b]] for b in range(p["bs"])])
    res, res_p = run_tal(case, _tal(p)), run_tal(permuted, _tal(p))
    inverse = perm.argsort(1)  # old GT i is at new position inverse[b, i]
    for b in range(p["bs"]):
        fg = res.fg_mask[b]
        assert torch.equal(res_p.fg_mask[b], fg)
        assert torch.equal(res_p.gt_idx[b][fg], inverse[b, res.gt_idx[b][fg]])
    for field in ("labels", "bboxes", "metrics", "ious"):
        torch.testing.assert_close(getattr(res_p, field), getattr(res, field), atol=1e-6, rtol=1e-5)


class PlainIoUTaskAlignedAssigner(TaskAlignedAssigner):
    """Ultralytics' assigner with the plain IoU of TOOD instead of CIoU (its documented override point)."""

    def iou_calculation(self, gt_bboxes, pd_bboxes):
        """Return the plain IoU, clamped at 0."""
        return bbox_iou(gt_bboxes, pd_bboxes, xywh=False).squeeze(-1).clamp_(0)


SLOTS = ((2.0, 34.0), (50.0, 82.0), (98.0, 114.0))  # disjoint per-axis slots, borders = 2 (mod 16), sides >= 16


@PROPERTY
@given(st.integers(0, 2**31 - 1), st.integers(1, 2), st.integers(1, 13))
def test_tal_equals_ultralytics_where_semantics_coincide(seed, bs, topk):
    """Equal to ultralytics' TaskAlignedAssigner (fg mask, assigned GT, labels, boxes, normalised targets) when:

    - same topk (and topk2 = topk), alpha = 1, beta = 6, and ultralytics with plain IoU instead of CIoU
      (``iou_calculation`` overridden), on probabilities;
    - GTs in disjoint slots whose sides are >= 16 px, so ultralytics' stride_val (16) enlargement never triggers, and
      whose borders are 2 (mod 16), so no anchor centre of strides 8/16/32 lies within 2 px of a border (mmdet's
      0.01 px margin and ultralytics' 1e-9 agree);
    - anchors inside a GT predict that GT jittered by < 1 px (so they only overlap their own GT), anchors outside every
      GT predict a 1x1 box around themselves (IoU 0 with every GT): the anchors that MMDetection's top-k over all
      anchors sees with t > 0 are exactly ultralytics' in-GT anchors, and no anchor is claimed by two GTs;
    - random scores and jitter, so no ties.
    """
    g = torch.Generator().manual_seed(seed)
    anc, _ = grid_anchors(128)
    na, nc = anc.shape[0], 5
    n_max = int(torch.randint(1, 7, (1,), generator=g))
    counts = torch.randint(1, n_max + 1, (bs,), generator=g)
    gt_bboxes = torch.zeros(bs, n_max, 4)
    for b in range(bs):
        for j, cell in enumerate(torch.randperm(9, generator=g)[: int(counts[b])].tolist()):
            (x1, x2), (y1, y2) = SLOTS[cell % 3], SLOTS[cell // 3]
            gt_bboxes[b, j] = torch.tensor([x1, y1, x2, y2])
    mask_gt = (torch.arange(n_max)[None] < counts[:, None]).float()[..., None]
    gt_labels = torch.randint(0, nc, (bs, n_max, 1), generator=g).float() * mask_gt
    pd_bboxes = torch.cat((anc - 0.5, anc + 0.5), 1).repeat(bs, 1, 1)  # (bs, A, 4) 1x1 boxes
    for b in range(bs):
        for j in range(int(counts[b])):
            inside = centers_inside(anc, gt_bboxes[b, j])
            jitter = (torch.rand(int(inside.sum()), 4, generator=g) - 0.5) * 1.8
            pd_bboxes[b, inside] = gt_bboxes[b, j] + jitter
    pd_scores = torch.rand(bs, na, nc, generator=g)

    ours = TOODTaskAlignedAssigner.from_hyp(topk=topk, alpha=1.0, beta=6.0)(
        pd_scores, pd_bboxes, anc, gt_labels, gt_bboxes, mask_gt
    )
    ul = PlainIoUTaskAlignedAssigner(topk=topk, num_classes=nc, alpha=1.0, beta=6.0, stride=list(STRIDES))
    _, ul_bboxes, ul_scores, ul_fg, ul_gt_idx = ul(pd_scores, pd_bboxes, anc, gt_labels, gt_bboxes, mask_gt)

    assert ours.fg_mask.any()
    assert torch.equal(ours.fg_mask, ul_fg)
    fg = ours.fg_mask
    assert torch.equal(ours.gt_idx[fg], ul_gt_idx[fg])
    assert torch.equal(ours.bboxes[fg], ul_bboxes[fg])
    assert torch.equal(ours.labels[fg], ul_scores[fg].argmax(-1))
    torch.testing.assert_close(ours.metrics, ul_scores.amax(-1), atol=1e-6, rtol=1e-5)


@PROPERTY
@given(CASES)
def test_atss_properties_and_dense_reference(p):
    """ATSS: positives inside their GT, at most topk per level per GT, IoU in [0, 1], equal to a dense reference."""
    case = random_case(p["seed"], p["bs"], p["n_max"])
    assigner = ATSSAssigner.from_hyp(topk=min(p["topk"], 9))
    if p["one_gt_per_chunk"]:
        assigner.chunk_elems = 1
    res = run_atss(case, assigner)
    for b in range(p["bs"]):
        fg = res.fg_mask[b]
        assert centers_inside(case["anc"][fg], case["gt_bboxes"][b, res.gt_idx[b][fg]]).all()
        assert torch.bincount(res.gt_idx[b][fg], minlength=1).max() <= assigner.topk * len(STRIDES)
        assert ((res.ious[b] >= 0) & (res.ious[b] <= 1)).all()
        assert torch.equal(res.metrics[b], fg.float())
        n = int(case["counts"][b])
        gt_idx, ious = reference_atss(case["anc"], case["strides"], case["gt_bboxes"][b, :n], assigner.topk)
        assert torch.equal(res.gt_idx[b], gt_idx)
        torch.testing.assert_close(res.ious[b], ious, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("n_gt", [0, 1, 1000])
def test_many_gts_shapes(n_gt):
    """0, 1 and 1000 GTs per image: shapes, dtypes and at most one GT per anchor, for both assigners."""
    case = random_case(7, 2, n_gt, imgsz=128)
    case["mask_gt"] = torch.ones(2, n_gt, 1)  # all real
    for res in (run_tal(case, TOODTaskAlignedAssigner.from_hyp()), run_atss(case, ATSSAssigner.from_hyp())):
        na = case["anc"].shape[0]
        assert res.fg_mask.shape == (2, na) and res.bboxes.shape == (2, na, 4)
        assert res.gt_idx.dtype == torch.long and res.labels.dtype == torch.long
        assert torch.isfinite(res.metrics).all() and torch.isfinite(res.ious).all()
        if n_gt == 1000:
            assert res.fg_mask.any()
