"""Alignment plots (yolo_tood.plots) on hand-made predictions whose picture is known, plus the scripts' outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_diagnostics import GT_BOX, REPO, make_dataset, shrinking_boxes

from yolo_tood.tools.analysis.alignment import AlignmentAccumulator, alignment_stats
from yolo_tood.tools.analysis.plots import (
    alignment_metric,
    head_maps,
    plot_distributions,
    plot_head_maps,
    plot_score_iou,
)
from yolo_tood.tools.commands import alignment as alignment_command
from yolo_tood.tools.commands import compare as compare_command

TOOD_CFG = REPO / "cfg" / "yolov8n-tood.yaml"


def model_result(score_of_iou, n: int = 80):
    """One object, n predictions of IoU (100 - k) / 100 whose score is score_of_iou(IoU)."""
    boxes, iou = shrinking_boxes(n)
    pred = {"bboxes": boxes, "scores": score_of_iou(iou)[:, None]}
    return alignment_stats([pred, pred], [{"bboxes": GT_BOX, "cls": torch.tensor([0])}] * 2)


@pytest.fixture(scope="module")
def results():
    return {"aligned": model_result(lambda u: u), "reversed": model_result(lambda u: 1 - u)}


def test_pairs_are_the_top50_the_pcc_is_computed_from(results):
    aligned = results["aligned"]
    assert aligned.pcc_top50 == pytest.approx(1.0) and results["reversed"].pcc_top50 == pytest.approx(-1.0)
    pairs = aligned.score_iou
    assert pairs.shape == (100, 2)  # 2 objects x their 50 most confident predictions
    assert torch.equal(pairs[:, 0], pairs[:, 1])  # score == IoU
    assert float(pairs[:, 1].min()) == pytest.approx(0.51)  # top 50 by score: IoU 1.00 .. 0.51
    assert "score_iou" not in aligned.to_dict()
    assert AlignmentAccumulator().result().score_iou.shape == (0, 2)


def test_score_iou_plot_is_a_diagonal_for_an_aligned_model(results, tmp_path):
    data = plot_score_iou(results, tmp_path / "score_iou.png", bins=20)
    assert (tmp_path / "score_iou.png").stat().st_size > 0
    hist = data["aligned"]["hist"]  # IoU along axis 0, score along axis 1
    assert hist.sum() == 100 and np.count_nonzero(hist - np.diag(np.diag(hist))) == 0  # all mass on the diagonal
    rev = data["reversed"]
    assert np.allclose(rev["score"], 1 - rev["iou"]) and rev["pcc"] == pytest.approx(-1.0)
    i, j = np.nonzero(rev["hist"])
    assert rev["hist"].sum() == 100 and np.abs(i + j - 19).max() <= 1  # anti-diagonal (1 - u may cross a bin edge)


def test_distributions_use_the_same_pairs_and_the_metric(results, tmp_path):
    data = plot_distributions(results, tmp_path / "distributions.png", alpha=1.0, beta=6.0, bins=10)
    assert (tmp_path / "distributions.png").stat().st_size > 0
    d = data["aligned"]
    assert np.allclose(d["t"], d["score"] * d["iou"] ** 6)
    assert np.allclose(alignment_metric(np.array([0.5]), np.array([0.5]), 2.0, 1.0), 0.125)
    for key in ("score", "iou", "t"):
        assert d[f"hist/{key}"].sum() == pytest.approx(1.0)
    assert d["hist/iou"][:5].sum() == 0  # the top-50 IoUs are all >= 0.51
    with pytest.raises(ValueError, match="score_iou"):
        from dataclasses import replace

        plot_distributions({"x": replace(results["aligned"], score_iou=None)}, tmp_path / "x.png")


@pytest.fixture(scope="module", params=["tood", "tap"])
def tood_model(request):
    """A yolov8n model with the T-Head (``tood``) or the stock head + task-aligned predictor (``tap``)."""
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(str(TOOD_CFG.with_name(f"yolov8n-{request.param}.yaml")), nc=2, verbose=False).eval()
    if request.param == "tap":  # off the no-op start, so that M and the offsets vary over the map
        with torch.no_grad():
            for predictor in (*model.model[-1].cls_prob, *model.model[-1].reg_offset):
                torch.nn.init.normal_(predictor[-1].weight, std=0.3)
    return model


def test_head_maps_match_the_head_output(tood_model, tmp_path):
    img = torch.rand(1, 3, 64, 64)
    maps = head_maps(tood_model, img)
    head = tood_model.model[-1]
    sizes = [(64 // int(s)) ** 2 for s in head.stride]
    assert [m.numel() for m in maps["prob"]] == sizes
    assert [tuple(o.shape[:2]) for o in maps["offsets"]] == [(4, 2)] * head.nl
    if hasattr(head, "stacked_convs"):  # the T-Head's layer attention; TAPDetect has none
        assert len(maps["cls_attention"]) == len(maps["reg_attention"]) == head.nl
        assert all(a.shape == (head.stacked_convs,) and bool(((a > 0) & (a < 1)).all()) for a in maps["cls_attention"])
    else:
        assert maps["cls_attention"] == [] and all(o.abs().sum() > 0 for o in maps["offsets"])
    nms_pre, head.nms_pre = head.nms_pre, 0
    try:
        out = tood_model(img)[0]  # (1, 4 + nc, A)
    finally:
        head.nms_pre = nms_pre
    best = out[0, 4:].amax(0)  # best class score per anchor
    assert torch.allclose(torch.cat([s.flatten() for s in maps["score"]]), best, atol=1e-6)
    with pytest.raises(ValueError, match="TOODDetect or TAPDetect head, got Detect"):
        from ultralytics.nn.tasks import DetectionModel

        head_maps(DetectionModel("yolov8n.yaml", nc=2, verbose=False), img)


def test_head_maps_png(tood_model, tmp_path):
    import cv2

    cv2.imwrite(str(tmp_path / "im.jpg"), np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    out = plot_head_maps(tood_model, tmp_path / "im.jpg", tmp_path / "maps.png", imgsz=64, arrows=5)
    assert (tmp_path / "maps.png").stat().st_size > 0
    assert [len(a) for a in out["anchors"]] == [5, 5, 4]  # the P5 level of a 64 px input has 2 x 2 cells


def test_alignment_script_writes_the_plots(tmp_path_factory, tmp_path):
    data = make_dataset(tmp_path_factory.mktemp("tiny_plots"))
    argv = ["--models", "yolov8n.yaml", str(TOOD_CFG), "--names", "stock", "tood", "--data", str(data)]
    alignment_command.main([*argv, "--imgsz", "64", "--batch", "2", "--plots", str(tmp_path), "--map-images", "2"])
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == ["distributions.png", "maps_0.png", "maps_1.png", "score_iou.png"]


def test_compare_alignment_writes_score_iou(tmp_path_factory, tmp_path):
    data = make_dataset(tmp_path_factory.mktemp("tiny_compare"), n_train=2, n_val=2)
    argv = ["--epochs", "1", "--imgsz", "64", "--batch", "2", "--seeds", "0", "--models", "stock", "--workers", "0"]
    compare_command.main([*argv, "--data", str(data), "--out", str(tmp_path), "--alignment", "--val-only"])
    assert (tmp_path / "score_iou.png").stat().st_size > 0
    assert (tmp_path / "runs" / "stock_s0" / "score_iou_val.pt").exists()
    assert "score_iou.png" in (tmp_path / "compare.md").read_text()


def test_map_colour_range_has_a_floor():
    """A nearly flat map (an untrained head's 0.01 +- 1e-9) gets a 1 % band: no float noise coloured as structure, and
    colour-bar ticks that need no offset text over the panel title; other maps keep their own range."""
    from yolo_tood.tools.analysis.plots import map_range

    assert map_range(np.array([0.2, 0.6])) == (0.2, 0.6)
    lo, hi = map_range(np.array([0.01001, 0.01001 + 1e-9]))
    assert hi - lo == pytest.approx(0.01 * 0.01001) and lo < 0.01001 < hi
    assert map_range(np.zeros(4)) == pytest.approx((-5e-9, 5e-9))  # an all-zero map still has a range
