"""The batched, sync-free assigners against a plain reference of their documented rules, looped image by image and GT
by GT, on seeded random batches (several images, images without GT, padding among the real GTs, tiny, overlapping and
duplicate GTs, tied predictions, both top-k modes, topk2, min_size, min_pos, GT chunks of every size); and the count
of their host syncs (none) and kernel launches (the same for 1 and 4 images: no loop over images)."""

from __future__ import annotations

import random
from collections import defaultdict

import pytest
import torch
from helpers import load_script
from ultralytics.utils.metrics import bbox_iou
from ultralytics.utils.tal import make_anchors

from yolo_tood.train.assigner import (
    ATSSAssigner,
    TOODTaskAlignedAssigner,
    centers_inside,
    dynamic_topk,
    gt_sizes,
    widen_small_boxes,
)

IMGSZ, STRIDES = 64, (8.0, 16.0, 32.0)
LEVEL_SIZES = [int(IMGSZ // s) ** 2 for s in STRIDES]  # 64 + 16 + 4 = 84 anchors
SEEDS = range(40)


def random_case(seed: int) -> dict:
    """Return a seeded random batch in pixels (inputs of both assigners) and the configuration of both assigners.

    1-4 images of up to 8 GT slots; real GTs sit anywhere among the padding, whose boxes and labels are garbage (the
    assigners must ignore them); a batch of several images has one without GT; about 20% of the GTs are tiny (below a
    stride), 20% repeat an earlier GT of their image (an exact IoU tie, to the lower index). Every anchor predicts a
    box of up to 3 strides a side; in "ties" cases anchors share predictions (equal metrics) and the metric is built
    from exact operations only (alpha 1, beta 1 or 2) so that ties stay exact whatever the vector width.
    """
    rng, g = random.Random(seed), torch.Generator().manual_seed(seed)
    sizes = torch.tensor([[IMGSZ // int(s)] * 2 for s in STRIDES])
    anc, strides = make_anchors(sizes, torch.tensor(STRIDES), 0.5)
    anc = anc * strides  # (A, 2) pixels
    na, nc = anc.shape[0], rng.choice([1, 3])
    bs, n_max = rng.randint(1, 4), rng.randint(0, 8)
    counts = [rng.randint(0, n_max) for _ in range(bs)]
    if bs > 1:
        counts[rng.randrange(bs)] = 0
    gt_bboxes, gt_labels, mask_gt = torch.zeros(bs, n_max, 4), torch.zeros(bs, n_max, 1), torch.zeros(bs, n_max, 1)
    for b in range(bs):
        real = sorted(rng.sample(range(n_max), counts[b]))
        for j in range(n_max):
            earlier = [i for i in real if i < j]
            if j in real and earlier and rng.random() < 0.2:  # a duplicate of an earlier GT
                i = rng.choice(earlier)
                gt_bboxes[b, j], gt_labels[b, j] = gt_bboxes[b, i], gt_labels[b, i]
            else:
                side = rng.uniform(0.5, 6.0) if rng.random() < 0.2 else IMGSZ ** rng.random()
                w, h = side * rng.uniform(0.5, 2.0), side * rng.uniform(0.5, 2.0)
                x, y = rng.uniform(-8, IMGSZ + 8), rng.uniform(-8, IMGSZ + 8)
                gt_bboxes[b, j] = torch.tensor([x - w / 2, y - h / 2, x + w / 2, y + h / 2])
                gt_labels[b, j] = rng.randrange(nc) if j in real else rng.randint(-1, nc + 3)  # padding: garbage
            mask_gt[b, j] = float(j in real)
    dist = torch.rand(bs, na, 4, generator=g) * 3 * strides.view(1, -1, 1)
    pd_bboxes = torch.cat((anc - dist[..., :2], anc + dist[..., 2:]), -1)
    pd_scores = torch.rand(bs, na, nc, generator=g)
    ties = rng.random() < 0.3
    if ties:  # anchor 2i + 1 predicts what anchor 2i does
        pd_bboxes[:, 1::2], pd_scores[:, 1::2] = pd_bboxes[:, 0::2], pd_scores[:, 0::2]
    tal = dict(
        topk=rng.randint(1, 15),
        alpha=1.0 if ties else rng.choice([0.5, 1.0, 1.5]),
        beta=rng.choice([1.0, 2.0] if ties else [1.0, 2.0, 6.0]),
        topk_mode=rng.choice(["fixed", "dynamic"]),
        topk_min=rng.randint(1, 5),
        topk_max=rng.randint(5, 25),
        min_size=rng.choice([0.0, 16.0]),
        topk2=rng.choice([None, 1, 2]),
    )
    atss = dict(
        topk=rng.randint(1, 10),
        anchor_scale=rng.choice([8.0, 2.0]),
        min_size=rng.choice([0.0, 16.0]),
        min_pos=rng.choice([0, 1, 3]),
    )
    return dict(
        anc=anc,
        strides=strides,
        nc=nc,
        pd_scores=pd_scores,
        pd_bboxes=pd_bboxes,
        gt_labels=gt_labels,
        gt_bboxes=gt_bboxes,
        mask_gt=mask_gt,
        tal=tal,
        atss=atss,
        chunk_elems=rng.choice([1 << 20, 1, 200]),  # one chunk, one GT per chunk, 1-2 GTs per chunk
    )


def real_gts(case: dict, b: int) -> list[int]:
    """Return the indices of the real (not padding) GTs of image ``b``."""
    return [j for j in range(case["mask_gt"].shape[1]) if case["mask_gt"][b, j, 0] != 0]


def highest_iou_claim(claims: list[tuple], stats: dict | None = None) -> tuple:
    """Return the winning claim (IoU, GT index, ...) of an anchor: highest IoU, exact ties to the lowest GT index;
    count in ``stats`` the anchors claimed by several GTs and those where the highest IoU is tied."""
    if stats is not None:
        stats["contested anchors"] += len(claims) > 1
        stats["IoU ties"] += sum(c[0] == max(c[0] for c in claims) for c in claims) > 1
    return max(claims, key=lambda c: (c[0], -c[1]))


def reference_tal(
    case: dict, assigner: TOODTaskAlignedAssigner, stats: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The TAL rules of the class docstring, image by image and GT by GT: (gt index or -1, t_hat, IoU), (B, A) each.

    1. t = s^alpha * u^beta over all anchors; 2. the top-k anchors by t (dynamic: the first k_g of the top-k_max);
    3. positive if t > 0 and the centre is inside the (widened) GT; 4. an anchor claimed by several GTs goes to the
    highest IoU, ties to the lowest GT; topk2: each GT keeps its topk2 positives of largest t (ties: better top-k
    rank); 5. t_hat = t / max(t) * max(u) over the GT's final positives.
    """
    a = assigner
    bs, na, _ = case["pd_scores"].shape
    gt_idx, t_hat, ious = torch.full((bs, na), -1), torch.zeros(bs, na), torch.zeros(bs, na)
    for b in range(bs):
        claims = defaultdict(list)  # anchor -> [(u, gt, t, rank)]
        for j in real_gts(case, b):
            box = case["gt_bboxes"][b, j]
            u = bbox_iou(box[None], case["pd_bboxes"][b], xywh=False).squeeze(-1)  # (A,)
            t = case["pd_scores"][b, :, int(case["gt_labels"][b, j, 0])] ** a.alpha * u**a.beta  # (A,)
            if a.topk_mode == "dynamic":
                top = t.topk(min(a.topk_max, na)).indices[: int(dynamic_topk(gt_sizes(box), a.topk_min, a.topk_max))]
            else:
                top = t.topk(min(a.topk, na)).indices
            inside = centers_inside(case["anc"][top], widen_small_boxes(box, a.min_size))
            for rank, (anchor, ok) in enumerate(zip(top.tolist(), inside.tolist())):
                if ok and t[anchor] > 0:
                    claims[anchor].append((u[anchor].item(), j, t[anchor].item(), rank))
        positives = defaultdict(list)  # gt -> [(t, rank, anchor, u)]
        for anchor, cl in claims.items():
            u, j, t, rank = highest_iou_claim(cl, stats)
            positives[j].append((t, rank, anchor, u))
        for j, pos in positives.items():
            if a.topk2 is not None:
                pos = sorted(pos, key=lambda p: (-p[0], p[1]))[: a.topk2]
            max_t, max_u = max(p[0] for p in pos), max(p[3] for p in pos)
            for t, _, anchor, u in pos:
                gt_idx[b, anchor], t_hat[b, anchor], ious[b, anchor] = j, t / max_t * max_u, u
    return gt_idx, t_hat, ious


def reference_atss(case: dict, assigner: ATSSAssigner, stats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ATSS rules of the class docstring, image by image and GT by GT: (gt index or -1, IoU), (B, A) each.

    Per level the ``topk`` anchors nearest the GT centre; threshold mean + std (unbiased) of their anchor-box IoUs,
    lowered by min_pos to the min_pos-th best IoU of the candidates inside the GT (all of them if fewer are inside);
    positive if IoU >= threshold and the centre is inside the (widened) GT; multi-GT anchors to the highest IoU.
    """
    a, anc = assigner, case["anc"]
    bs, na = case["mask_gt"].shape[0], anc.shape[0]
    half = case["strides"] * a.anchor_scale / 2
    anchor_boxes = torch.cat((anc - half, anc + half), 1)  # (A, 4) squares of side anchor_scale * stride
    gt_idx, ious = torch.full((bs, na), -1), torch.zeros(bs, na)
    for b in range(bs):
        claims = defaultdict(list)  # anchor -> [(u, gt)]
        for j in real_gts(case, b):
            box = case["gt_bboxes"][b, j]
            centre = (box[:2] + box[2:]) / 2
            cand, start = [], 0
            for size in LEVEL_SIZES:
                pts = anc[start : start + size]
                d = (centre[0] - pts[:, 0]) ** 2 + (centre[1] - pts[:, 1]) ** 2  # squared centre distances
                cand += (d.topk(min(a.topk, size), largest=False).indices + start).tolist()
                start += size
            u = bbox_iou(box[None], anchor_boxes[cand], xywh=False).squeeze(-1)  # (K,)
            thr = (u.mean() + u.std()).item() if len(cand) > 1 else u.item()
            inside = centers_inside(anc[cand], widen_small_boxes(box, a.min_size)).tolist()
            if a.min_pos:
                inside_u = sorted((ui for ui, ok in zip(u.tolist(), inside) if ok), reverse=True)
                thr = min(thr, inside_u[a.min_pos - 1] if len(inside_u) >= a.min_pos else -1.0)
            for anchor, ui, ok in zip(cand, u.tolist(), inside):
                if ok and ui >= thr:
                    claims[anchor].append((ui, j))
        for anchor, cl in claims.items():
            ious[b, anchor], gt_idx[b, anchor] = highest_iou_claim(cl, stats)
    return gt_idx, ious


def check_result(res, case: dict, gt_idx: torch.Tensor, metrics: torch.Tensor, ious: torch.Tensor) -> None:
    """Assert that an AssignResult equals the reference's assignment, and its labels and boxes follow from it."""
    fg = gt_idx >= 0
    assert torch.equal(res.gt_idx, gt_idx)
    assert torch.equal(res.fg_mask, fg)
    labels, boxes = torch.full_like(gt_idx, case["nc"]), torch.zeros(*gt_idx.shape, 4)
    for b, anchor in fg.nonzero().tolist():
        labels[b, anchor] = int(case["gt_labels"][b, gt_idx[b, anchor], 0])
        boxes[b, anchor] = case["gt_bboxes"][b, gt_idx[b, anchor]]
    assert torch.equal(res.labels, labels)
    assert torch.equal(res.bboxes, boxes)
    torch.testing.assert_close(res.metrics, metrics, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(res.ious, ious, atol=1e-6, rtol=1e-5)


def run_tal(case: dict, assigner: TOODTaskAlignedAssigner):
    """Run the TAL assigner on a case."""
    c = case
    return assigner(c["pd_scores"], c["pd_bboxes"], c["anc"], c["gt_labels"], c["gt_bboxes"], c["mask_gt"])


def run_atss(case: dict, assigner: ATSSAssigner, level_sizes: list[int] | None = None):
    """Run the ATSS assigner on a case."""
    c = case
    return assigner(c["anc"], c["strides"], c["gt_labels"], c["gt_bboxes"], c["mask_gt"], c["nc"], level_sizes)


@pytest.mark.parametrize("seed", SEEDS)
def test_tal_equals_the_per_gt_reference(seed):
    case = random_case(seed)
    assigner = TOODTaskAlignedAssigner.from_hyp(**case["tal"])
    assigner.chunk_elems = case["chunk_elems"]
    check_result(run_tal(case, assigner), case, *reference_tal(case, assigner))


@pytest.mark.parametrize("seed", SEEDS)
def test_atss_equals_the_per_gt_reference(seed):
    case = random_case(seed)
    assigner = ATSSAssigner.from_hyp(**case["atss"])
    assigner.chunk_elems = case["chunk_elems"]
    gt_idx, ious = reference_atss(case, assigner)
    for level_sizes in (LEVEL_SIZES, None):  # given, or read from the strides
        check_result(run_atss(case, assigner, level_sizes), case, gt_idx, (gt_idx >= 0).float(), ious)


def test_the_random_cases_exercise_the_rules():
    """The seeds above hold positives, several images, images without GT, padding between real GTs, anchors claimed
    by several GTs, exact IoU ties between them and topk2 cutting positives (else the comparison would prove
    little)."""
    seen = defaultdict(int)
    for seed in SEEDS:
        case = random_case(seed)
        mask = case["mask_gt"][..., 0]
        seen["several images"] += mask.shape[0] > 1
        seen["image without GT"] += bool((mask.sum(1) == 0).any()) and mask.shape[0] > 1
        seen["padding before a real GT"] += bool((mask[:, 1:] > mask[:, :-1]).any())
        gt_idx, _, _ = reference_tal(case, TOODTaskAlignedAssigner.from_hyp(**{**case["tal"], "topk2": None}), seen)
        seen["TAL positives"] += bool((gt_idx >= 0).any())
        if case["tal"]["topk2"] is not None:
            cut, _, _ = reference_tal(case, TOODTaskAlignedAssigner.from_hyp(**case["tal"]))
            seen["topk2 cuts"] += bool((cut >= 0).sum() < (gt_idx >= 0).sum())
        seen["ATSS positives"] += bool(
            (reference_atss(case, ATSSAssigner.from_hyp(**case["atss"]), seen)[0] >= 0).any()
        )
    assert len(seen) == 8 and min(seen.values()) >= 3, dict(seen)


def test_no_host_sync_and_no_loop_over_images():
    """Both assigners make no host sync (``scripts/bench_launches.py``'s rule) when ATSS is given its level sizes,
    and launch as many kernels for 4 images as for 1."""
    count = load_script("bench_launches").count
    case = random_case(next(s for s in SEEDS if random_case(s)["mask_gt"][0].sum() >= 3))  # image 0: 3 GTs or more
    launches = {}
    for bs in (1, 4):
        c = dict(case)
        for key in ("pd_scores", "pd_bboxes", "gt_labels", "gt_bboxes", "mask_gt"):
            c[key] = torch.cat([case[key][:1]] * bs)
        tal, atss = (
            TOODTaskAlignedAssigner.from_hyp(topk_mode="dynamic", topk2=1, min_size=16.0),
            ATSSAssigner.from_hyp(min_pos=1),
        )
        for name, run, args in (("tal", run_tal, (c, tal)), ("atss", run_atss, (c, atss, LEVEL_SIZES))):
            with count() as counts:
                run(*args)
            assert counts.syncs == 0, (name, dict(counts.sync_ops))
            launches[name, bs] = counts.launches
    assert launches["tal", 1] == launches["tal", 4] and launches["atss", 1] == launches["atss", 4], launches


def test_level_sizes_must_cover_the_anchors():
    case = random_case(1)
    with pytest.raises(ValueError, match="level_sizes"):
        run_atss(case, ATSSAssigner.from_hyp(), [64, 16])
