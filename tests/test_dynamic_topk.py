"""Dynamic top-k of the TAL assigner (opt-in ``tal_topk_mode: dynamic``): k per GT size, hand cases, chunking."""

from __future__ import annotations

import math

import pytest
import torch

from yolo_tood.train.assigner import TOODTaskAlignedAssigner, dynamic_topk
from yolo_tood.train.hyp import TOODHyp


def test_k_per_size_hand_values():
    # k = round(21 - 16 * r), r = log(s / 8) / log(12) clipped to [0, 1]
    sizes = torch.tensor([1.0, 4.0, 8.0, 16.0, math.sqrt(8 * 96), 32.0, 96.0, 500.0, 0.0])
    # 16 px: r = log 2 / log 12 = 0.279 -> 16.54 -> 17; sqrt(8 * 96): r = 0.5 -> 13; 32 px: r = 0.558 -> 12.07 -> 12
    assert dynamic_topk(sizes, 5, 21).tolist() == [21, 21, 21, 17, 13, 12, 5, 5, 21]
    assert dynamic_topk(torch.tensor([4.0, 50.0, 200.0]), 9, 9).tolist() == [9, 9, 9]  # k_min == k_max: fixed


def test_k_is_monotone_and_bounded():
    sizes = torch.logspace(-1, 3, 500)
    k = dynamic_topk(sizes, 3, 30)
    assert int(k.min()) == 3 and int(k.max()) == 30
    assert bool((k[1:] <= k[:-1]).all())


def two_gt_scene():
    """A 200 x 200 image with one anchor per pixel, a 6 px GT (class 0) and a 100 px GT (class 1).

    Every anchor inside a GT predicts exactly that GT's box (IoU 1) with a distinct score of its class, every other
    anchor scores 0: so t = s, and a GT's positives are its k highest-scoring inside anchors.
    """
    ys, xs = torch.meshgrid(torch.arange(200.0), torch.arange(200.0), indexing="ij")
    anc = torch.stack((xs.flatten(), ys.flatten()), 1) + 0.5  # (A, 2)
    gts = torch.tensor([[10.0, 10.0, 16.0, 16.0], [60.0, 60.0, 160.0, 160.0]])
    scores = torch.zeros(1, anc.shape[0], 2)
    pboxes = torch.zeros(1, anc.shape[0], 4)
    g = torch.Generator().manual_seed(0)
    for j, box in enumerate(gts):
        inside = ((anc > box[:2]) & (anc < box[2:])).all(1)
        scores[0, inside, j] = torch.rand(int(inside.sum()), generator=g) * 0.9 + 0.05
        pboxes[0, inside] = box
    labels = torch.tensor([[[0.0], [1.0]]])
    return scores, pboxes, anc, labels, gts[None], torch.ones(1, 2, 1)


@pytest.mark.parametrize("chunk_elems", [1 << 20, 1])  # 1: one GT per chunk
def test_dynamic_assigner_gives_each_gt_its_own_k(chunk_elems):
    scene = two_gt_scene()
    dyn = TOODTaskAlignedAssigner.from_hyp(topk_mode="dynamic", topk_min=5, topk_max=21)
    dyn.chunk_elems = chunk_elems
    res = dyn(*scene)
    counts = torch.bincount(res.gt_idx[res.fg_mask], minlength=2).tolist()
    assert counts == [21, 5]  # 6 px -> k_max, 100 px -> k_min
    # each GT's positives are those the fixed assigner picks with that GT's k
    for j, k in enumerate((21, 5)):
        fixed = TOODTaskAlignedAssigner.from_hyp(topk=k)(*scene)
        assert torch.equal(res.fg_mask & (res.gt_idx == j), fixed.fg_mask & (fixed.gt_idx == j))
        sel = res.gt_idx == j
        assert torch.allclose(res.metrics[sel], fixed.metrics[sel])


def test_fixed_mode_ignores_the_bounds():
    scene = two_gt_scene()
    a = TOODTaskAlignedAssigner.from_hyp(topk=13)(*scene)
    b = TOODTaskAlignedAssigner.from_hyp(topk=13, topk_min=1, topk_max=2)(*scene)
    assert torch.bincount(a.gt_idx[a.fg_mask]).tolist() == [13, 13]
    assert torch.equal(a.fg_mask, b.fg_mask) and torch.equal(a.gt_idx, b.gt_idx)


def test_chunk_topk_width_is_k_max(monkeypatch):
    """The chunk's top-k over the anchors is k_max wide, so memory stays (chunk, A) as in the fixed mode."""
    widths = []
    original = torch.Tensor.topk
    monkeypatch.setattr(torch.Tensor, "topk", lambda self, k, *a, **kw: widths.append(k) or original(self, k, *a, **kw))
    TOODTaskAlignedAssigner.from_hyp(topk_mode="dynamic", topk_min=4, topk_max=17)(*two_gt_scene())
    assert widths == [17]


def test_yaml_keys_reach_the_assigner_and_are_validated():
    from test_loss import FakeHead, FakeModel

    from yolo_tood.train.loss import TOODLoss

    assert (TOODHyp().tal_topk_mode, TOODHyp().tal_topk_min, TOODHyp().tal_topk_max) == ("fixed", 5, 21)
    crit = TOODLoss(FakeModel(FakeHead(), tal_topk_mode="dynamic", tal_topk_min=3, tal_topk_max=30))
    a = crit.tal_assigner
    assert (a.topk_mode, a.topk_min, a.topk_max, a.topk) == ("dynamic", 3, 30, 13)
    for bad, match in (
        ({"tal_topk_mode": "auto"}, "tal_topk_mode"),
        ({"tal_topk_min": 0}, "tal_topk_min"),
        ({"tal_topk_min": 9, "tal_topk_max": 8}, "tal_topk_min"),
        ({"tal_topk_max": 2.5}, "tal_topk_max"),
    ):
        with pytest.raises(ValueError, match=match):
            TOODHyp.from_yaml(bad)


def test_compare_variant_with_the_str_key():

    from yolo_tood.tools.compare import models as compare_models

    assert compare_models.parse_variant("tood:tal_topk_mode=dynamic,tal_topk_max=30") == {
        "tal_topk_mode": "dynamic",
        "tal_topk_max": 30,
    }
    assert compare_models.model_labels(["tood:tal_topk_mode=dynamic"]) == ["tood-tal_topk_modedynamic"]
    with pytest.raises(ValueError):
        compare_models.parse_variant("tood:tal_topk_mode=auto")
