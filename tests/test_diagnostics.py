"""Tests of yolo_tood.tools.analysis (statistics, validator, reports): known answers and an end-to-end smoke test."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from yolo_tood.tools.analysis import (
    AlignmentAccumulator,
    AlignmentResult,
    NMSSettings,
    alignment_stats,
    budget_threshold,
    evaluate_alignment,
    nms_record,
    object_alignment,
    rank_correlation,
    scores_from_conf_cls,
)

REPO = Path(__file__).resolve().parents[1]


def nms_counts(boxes, scores, gt_boxes, gt_cls, conf=0.05, **nms_kwargs) -> dict[str, int]:
    """Run ultralytics NMS on one image's predictions and count correct, duplicate, error and redundant boxes."""
    return nms_record(boxes, scores, gt_boxes, gt_cls, NMSSettings(conf, **nms_kwargs)).counts()


def shrinking_boxes(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return n boxes inside the GT [0, 0, 100, 100] whose width (and IoU (100 - k) / 100) shrinks with k."""
    k = torch.arange(n, dtype=torch.float32)
    boxes = torch.stack([torch.zeros(n), torch.zeros(n), 100 - k, torch.full((n,), 100.0)], 1)
    return boxes, (100 - k) / 100


GT_BOX = torch.tensor([[0.0, 0.0, 100.0, 100.0]])


class TestRankCorrelation:
    def test_same_order_is_one(self):
        assert rank_correlation(torch.tensor([0.1, 0.2, 0.7]), torch.tensor([1.0, 5.0, 6.0])) == pytest.approx(1.0)

    def test_reversed_order_is_minus_one(self):
        assert rank_correlation(torch.tensor([0.1, 0.2, 0.7]), torch.tensor([6.0, 5.0, 1.0])) == pytest.approx(-1.0)

    def test_uses_ranks_not_values(self):
        # monotone but non-linear: Pearson on values < 1, on ranks exactly 1
        x = torch.tensor([1.0, 2.0, 3.0, 4.0])
        assert rank_correlation(x, x.exp() ** 3) == pytest.approx(1.0)

    def test_ties_get_average_ranks(self):
        # ranks x: 1, 2.5, 2.5, 4; y: 1, 2, 3, 4 -> Pearson of the ranks
        x, y = torch.tensor([0.1, 0.5, 0.5, 0.9]), torch.tensor([1.0, 2.0, 3.0, 4.0])
        expected = np.corrcoef([1, 2.5, 2.5, 4], [1, 2, 3, 4])[0, 1]
        assert rank_correlation(x, y) == pytest.approx(expected)

    def test_undefined_cases_are_nan(self):
        assert math.isnan(rank_correlation(torch.tensor([0.3]), torch.tensor([0.5])))
        assert math.isnan(rank_correlation(torch.tensor([0.3, 0.3]), torch.tensor([0.5, 0.6])))


class TestObjectAlignment:
    def test_aligned_scores_give_pcc_one_and_known_top10_iou(self):
        boxes, ious = shrinking_boxes(60)
        scores = ious[:, None].clone()  # score order == IoU order
        pcc, mean_iou = object_alignment(boxes, scores, GT_BOX, torch.tensor([0]))
        assert pcc == [pytest.approx(1.0)]
        assert mean_iou == [pytest.approx(0.955)]  # widths 100..91 -> mean IoU (100 - 4.5) / 100

    def test_reversed_scores_give_pcc_minus_one(self):
        boxes, ious = shrinking_boxes(60)
        scores = (1 - ious)[:, None]  # the worst boxes are the most confident
        pcc, mean_iou = object_alignment(boxes, scores, GT_BOX, torch.tensor([0]))
        assert pcc == [pytest.approx(-1.0)]
        assert mean_iou == [pytest.approx(0.455)]  # top-10 confident are widths 50..41

    def test_only_top50_enter_the_correlation(self):
        # 50 aligned confident predictions, then 10 less confident ones in the opposite order: PCC stays 1
        boxes, ious = shrinking_boxes(60)
        scores = torch.cat([ious[:50], 0.1 - ious[50:] / 10])[:, None]
        pcc, _ = object_alignment(boxes, scores, GT_BOX, torch.tensor([0]))
        assert pcc == [pytest.approx(1.0)]
        pcc_all, _ = object_alignment(boxes, scores, GT_BOX, torch.tensor([0]), topk_pcc=60)
        assert pcc_all[0] < 1.0

    def test_uses_the_score_of_the_objects_class(self):
        boxes, ious = shrinking_boxes(20)
        scores = torch.stack([1 - ious, ious], 1)  # class 0 anti-aligned, class 1 aligned
        assert object_alignment(boxes, scores, GT_BOX, torch.tensor([1]))[0] == [pytest.approx(1.0)]
        assert object_alignment(boxes, scores, GT_BOX, torch.tensor([0]))[0] == [pytest.approx(-1.0)]

    def test_predictions_relate_to_their_best_iou_object_only(self):
        gts = torch.tensor([[0.0, 0.0, 100.0, 100.0], [200.0, 0.0, 300.0, 100.0]])
        boxes_a, ious_a = shrinking_boxes(10)
        boxes_b = boxes_a + torch.tensor([200.0, 0.0, 200.0, 0.0])
        boxes = torch.cat([boxes_a, boxes_b])
        scores = torch.cat([ious_a, 1 - ious_a])[:, None]  # object A aligned, object B reversed
        pcc, mean_iou = object_alignment(boxes, scores, gts, torch.tensor([0, 0]))
        assert pcc == [pytest.approx(1.0), pytest.approx(-1.0)]
        assert mean_iou == [pytest.approx(0.955), pytest.approx(0.955)]

    def test_objects_without_enough_predictions(self):
        gts = torch.tensor([[0.0, 0.0, 100.0, 100.0], [200.0, 0.0, 300.0, 100.0], [500.0, 500.0, 510.0, 510.0]])
        boxes = torch.tensor([[0.0, 0.0, 100.0, 50.0], [200.0, 0.0, 300.0, 100.0], [200.0, 0.0, 300.0, 100.0]])
        scores = torch.tensor([[0.9], [0.5], [0.4]])
        pcc, mean_iou = object_alignment(boxes, scores, gts, torch.tensor([0, 0, 0]))
        assert math.isnan(pcc[0])  # a single prediction: no correlation
        assert math.isnan(pcc[1])  # two predictions with equal IoU: constant ranks
        assert math.isnan(pcc[2])  # no related prediction at all
        assert mean_iou == [pytest.approx(0.5), pytest.approx(1.0), 0.0]

    def test_no_gt(self):
        boxes, ious = shrinking_boxes(5)
        assert object_alignment(boxes, ious[:, None], torch.zeros(0, 4), torch.zeros(0)) == ([], [])


def duplicate_scene() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two class-0 objects and predictions whose fate under NMS (IoU 0.7, conf 0.05) is known."""
    gt_boxes = torch.tensor([[0.0, 0.0, 100.0, 100.0], [200.0, 0.0, 300.0, 100.0]])
    gt_cls = torch.tensor([0, 0])
    boxes = torch.tensor(
        [
            [0.0, 0.0, 100.0, 100.0],  # 0.9 cls0: kept, matches A -> correct
            [0.0, 0.0, 100.0, 95.0],  # 0.8 cls0: IoU 0.95 with the first -> removed by NMS -> redundant
            [0.0, 0.0, 100.0, 60.0],  # 0.7 cls0: IoU 0.6 with the first -> kept, A already matched -> duplicate
            [200.0, 0.0, 300.0, 30.0],  # 0.6 cls0: IoU 0.3 with B -> error
            [500.0, 500.0, 600.0, 600.0],  # 0.5 cls0: background
            [200.0, 0.0, 300.0, 100.0],  # 0.01 cls0: below conf, ignored although perfect
            [200.0, 0.0, 300.0, 100.0],  # 0.6 cls1: no class-1 object -> background (class-aware)
        ]
    )
    scores = torch.zeros(7, 2)
    scores[torch.arange(7), torch.tensor([0, 0, 0, 0, 0, 0, 1])] = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5, 0.01, 0.6])
    return boxes, scores, gt_boxes, gt_cls


class TestNMSCounts:
    def test_known_correct_duplicate_error_redundant(self):
        counts = nms_counts(*duplicate_scene(), conf=0.05, iou=0.7)
        assert counts == {"correct": 1, "duplicate": 1, "error": 1, "redundant": 1, "detections": 5}

    def test_stricter_nms_turns_duplicate_into_redundant(self):
        counts = nms_counts(*duplicate_scene(), conf=0.05, iou=0.5)  # IoU 0.6 > 0.5: the third box is removed
        assert counts == {"correct": 1, "duplicate": 0, "error": 1, "redundant": 2, "detections": 4}

    def test_max_det_removals_count_as_redundant(self):
        counts = nms_counts(*duplicate_scene(), conf=0.05, iou=0.7, max_det=1)
        assert counts == {"correct": 1, "duplicate": 0, "error": 0, "redundant": 2, "detections": 1}

    def test_low_conf_threshold_admits_the_perfect_box(self):
        counts = nms_counts(*duplicate_scene(), conf=0.005, iou=0.7)
        # the 0.01 box is kept (its IoU with the 0.6 error box is 0.3): B is now matched
        assert counts["correct"] == 2 and counts["error"] == 1

    def test_no_gt_counts_detections_only(self):
        boxes, scores, _, _ = duplicate_scene()
        counts = nms_counts(boxes, scores, torch.zeros(0, 4), torch.zeros(0))
        assert counts == {"correct": 0, "duplicate": 0, "error": 0, "redundant": 0, "detections": 5}


class TestAlignmentStats:
    def test_aggregates_over_images_and_objects(self):
        boxes, ious = shrinking_boxes(60)
        gt = {"bboxes": GT_BOX, "cls": torch.tensor([0])}
        aligned = {"bboxes": boxes, "scores": ious[:, None]}
        reversed_ = {"bboxes": boxes, "scores": (1 - ious)[:, None]}
        res = alignment_stats([aligned, reversed_], [gt, gt])
        assert isinstance(res, AlignmentResult)
        assert res.pcc_top50 == pytest.approx(0.0)  # mean of 1 and -1
        assert res.iou_top10 == pytest.approx((0.955 + 0.455) / 2)
        assert (res.num_objects, res.pcc_objects, res.num_images) == (2, 2, 2)
        assert res.correct == 2  # one per image

    def test_conf_cls_input_equals_score_matrix(self):
        boxes, scores, gt_boxes, gt_cls = duplicate_scene()
        conf, cls = scores.max(1)
        gt = {"bboxes": gt_boxes, "cls": gt_cls}
        a = alignment_stats([{"bboxes": boxes, "scores": scores}], [gt])
        b = alignment_stats([{"bboxes": boxes, "conf": conf, "cls": cls}], [gt])
        assert a.to_dict() == b.to_dict()
        assert (a.correct, a.duplicate, a.error, a.redundant) == (1, 1, 1, 1)
        assert torch.equal(scores_from_conf_cls(conf, cls, 2), scores)

    def test_empty_result_serialises_nan_as_none(self):
        acc = AlignmentAccumulator()
        acc.update(torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0))
        d = acc.result().to_dict()
        assert d["pcc_top50"] is None and d["iou_top10"] is None and d["num_images"] == 1

    def test_scores_without_classes_are_rejected(self):
        with pytest.raises(ValueError):
            AlignmentAccumulator().update(GT_BOX, torch.tensor([0.5]), GT_BOX, torch.tensor([0]))


def random_scene(seed: int, num_gt: int = 4, num_pred: int = 200, nc: int = 2):
    """Jittered copies of a few GTs plus background boxes, with random per-class scores."""
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(num_gt, 2, generator=g) * 400
    gt_boxes = torch.cat([xy, xy + 30 + torch.rand(num_gt, 2, generator=g) * 70], 1)
    gt_cls = torch.randint(0, nc, (num_gt,), generator=g)
    src = gt_boxes[torch.randint(0, num_gt, (num_pred,), generator=g)]
    boxes = src + torch.randn(num_pred, 4, generator=g) * 8
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 2)
    return boxes, torch.rand(num_pred, nc, generator=g), gt_boxes, gt_cls


class TestEqualBudget:
    @pytest.mark.parametrize("seed", range(4))
    def test_recount_equals_nms_at_that_threshold(self, seed):
        boxes, scores, gt_boxes, gt_cls = random_scene(seed)
        record = nms_record(boxes, scores, gt_boxes, gt_cls, NMSSettings(conf=0.001))
        for conf in (0.05, 0.3, 0.6, 0.9):
            assert record.counts(conf) == nms_counts(boxes, scores, gt_boxes, gt_cls, conf=conf)

    def test_recount_below_the_nms_threshold_is_rejected(self):
        record = nms_record(*duplicate_scene(), NMSSettings(conf=0.05))
        with pytest.raises(ValueError, match="below the NMS threshold"):
            record.counts(0.01)

    def test_known_budget_of_one_detection_per_object(self):
        boxes, scores, gt_boxes, gt_cls = duplicate_scene()
        res = alignment_stats([{"bboxes": boxes, "scores": scores}], [{"bboxes": gt_boxes, "cls": gt_cls}])
        # post-NMS scores 0.9, 0.7, 0.6, 0.6, 0.5, 0.01: the threshold is the third, leaving the correct box and the
        # duplicate; above 0.6 three candidates overlap A, of which NMS removed one
        assert res.budget == {
            "conf": pytest.approx(0.6),
            "correct": 1,
            "duplicate": 1,
            "error": 0,
            "redundant": 1,
            "detections": 2,
        }

    @pytest.mark.parametrize("seed", range(3))
    def test_budget_counts_do_not_depend_on_calibration(self, seed):
        boxes, scores, gt_boxes, gt_cls = random_scene(seed)
        gt = [{"bboxes": gt_boxes, "cls": gt_cls}]
        sharp = alignment_stats([{"bboxes": boxes, "scores": scores**4}], gt)
        flat = alignment_stats([{"bboxes": boxes, "scores": scores}], gt)  # same ranking, higher scores
        assert flat.detections > sharp.detections and flat.redundant > sharp.redundant  # fixed threshold: more boxes
        strip = lambda b: {k: v for k, v in b.items() if k != "conf"}  # noqa: E731
        assert strip(flat.budget) == strip(sharp.budget)  # ...but the equal-budget counts are the same
        assert sharp.budget["detections"] == len(gt_cls)

    def test_budget_threshold_without_enough_detections_is_the_nms_threshold(self):
        record = nms_record(*duplicate_scene(), NMSSettings(conf=0.05))
        assert budget_threshold([record], 100) == 0.05
        assert budget_threshold([record], 0) == pytest.approx(0.9)


def make_dataset(root: Path, n_train: int = 2, n_val: int = 3, size: int = 64) -> Path:
    """Write a tiny YOLO dataset of coloured rectangles and return its data YAML."""
    import cv2

    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            img = np.full((size, size, 3), 114, np.uint8)
            lines = []
            for _ in range(2):
                w, h = rng.integers(12, 30, 2)
                x, y = rng.integers(0, size - w), rng.integers(0, size - h)
                c = int(rng.integers(0, 2))
                img[y : y + h, x : x + w] = (255, 0, 0) if c == 0 else (0, 0, 255)
                lines.append(f"{c} {(x + w / 2) / size:.6f} {(y + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
            cv2.imwrite(str(root / "images" / split / f"{i}.jpg"), img)
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    yaml = root / "data.yaml"
    yaml.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: blue\n  1: red\n")
    return yaml


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("tiny"))


def check_result(res: AlignmentResult, n_images: int, n_objects: int) -> None:
    assert isinstance(res, AlignmentResult)
    assert (res.num_images, res.num_objects) == (n_images, n_objects)
    assert 0.0 <= res.iou_top10 <= 1.0
    assert math.isnan(res.pcc_top50) or -1.0 <= res.pcc_top50 <= 1.0
    for k in ("correct", "duplicate", "error", "redundant", "detections"):
        assert isinstance(getattr(res, k), int) and getattr(res, k) >= 0
    assert res.correct <= res.num_objects
    assert res.correct + res.duplicate + res.error <= res.detections
    assert "metrics/mAP50-95(B)" in res.metrics


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", str(REPO / "cfg" / "yolov8n-tood.yaml")], ids=["stock", "tood"])
def test_evaluate_alignment_smoke(cfg, tiny_data, tmp_path):
    from ultralytics import YOLO

    if "tood" in cfg and not (REPO / "cfg" / "yolov8-tood.yaml").exists():
        pytest.skip("TOOD model YAML not present")
    torch.manual_seed(0)
    model = YOLO(cfg)  # random init, built offline from the YAML
    res = evaluate_alignment(model, tiny_data, split="val", imgsz=64, batch=2, save_dir=tmp_path, workers=0)
    check_result(res, n_images=3, n_objects=6)
    assert res.to_dict()["num_images"] == 3


def test_alignment_table_renders_one_row_per_model():
    from yolo_tood.tools.analysis.report import alignment_table

    res = AlignmentResult(0.5, 0.25, 3, 2, 1, 4, 20, 5, 4, 2, metrics={"metrics/mAP50-95(B)": 0.125})
    empty = AlignmentAccumulator().result()
    lines = alignment_table({"stock": res, "tood": empty}).splitlines()
    assert lines[0].startswith("| model | PCC top-50 | IoU top-10 | correct | duplicate | error")
    assert lines[2] == "| stock | 0.500 | 0.250 | 3 | 2 | 1 | 4 | 5 | 0.125 |"
    assert lines[3] == "| tood | - | - | 0 | 0 | 0 | 0 | 0 | - |"


def test_curve_gap_hand_case():
    """Seed means compared epoch by epoch after the excluded start; deficits beyond the margin are listed."""
    from yolo_tood.tools.analysis.report import curve_gap

    stock = [[0.0, 0.10, 0.20, 0.30, 0.40], [0.0, 0.10, 0.20, 0.34, 0.40]]  # mean 0, .10, .20, .32, .40
    tood = [[0.0, 0.00, 0.21, 0.30, 0.45, 0.5]]  # one epoch longer: compared up to epoch 5
    gap = curve_gap(stock, tood, after=2, margin=0.01)
    assert gap["below"] == [4] and gap["worst_epoch"] == 4 and gap["epochs"] == 5 and gap["seeds"] == (2, 1)
    assert gap["worst"] == pytest.approx(-0.02)  # epoch 2 (-0.10) is inside the excluded start
    assert curve_gap(stock, tood, after=0)["below"] == [2, 4]
    assert curve_gap(stock, stock, after=5) == {
        "below": [],
        "worst": None,
        "worst_epoch": None,
        "epochs": 5,
        "seeds": (2, 2),
    }


def test_compare_reports_curve_gaps():
    from yolo_tood.tools.compare import report as compare_report

    gaps = compare_report.curve_gaps({"stock": [[0.1] * 12], "tood": [[0.1] * 11 + [0.05]], "other": [[0.2] * 12]})
    assert gaps["tood"]["below"] == [12] and gaps["other"]["below"] == [] and set(gaps) == {"tood", "other"}


def test_compare_pairs_seeds_against_the_first_model(tmp_path):
    """Paired differences use only the seeds both models have; hand-computed mean and sample std, in compare.md."""
    import argparse

    from yolo_tood.tools.compare import report as compare_report

    def record(val: float, test: float | None = None) -> dict:
        splits = {"val": {"map50": 0.0, "map": val, "per_class": {}}}
        if test is not None:
            splits["test"] = {"map50": 0.0, "map": test, "per_class": {}}
        speed = {"epoch_s": 1.0, "train_img_per_s": 1.0, "wall_s": 1.0}
        return {"val": splits, "speed": speed, "cost": {"params": 1e6, "gflops_thop": 1.0, "gflops_torch": 1.0}}

    runs = {
        "stock": {0: record(0.50, 0.40), 1: record(0.60, 0.50), 2: record(0.70)},
        "tap": {0: record(0.53, 0.40), 1: record(0.59, 0.55), 3: record(0.90)},  # seed 3 has no stock run
    }
    summary = compare_report.summarize(runs, ["val", "test"])
    paired = summary["tap"]["paired_vs_stock"]
    assert "paired_vs_stock" not in summary["stock"]
    assert paired["val"]["diffs"] == pytest.approx({0: 0.03, 1: -0.01})
    assert paired["val"]["mean"] == pytest.approx(0.01) and paired["val"]["std"] == pytest.approx(0.02 * 2**0.5)
    assert paired["test"]["diffs"] == pytest.approx({0: 0.0, 1: 0.05}) and paired["test"]["n"] == 2
    args = argparse.Namespace(
        family="yolov8", scale="n", data="d.yaml", epochs=1, imgsz=64, batch=2, optimizer="auto", lr0=0.01,
        seeds=[0, 1, 2, 3], device="cpu", workers=0, alignment=False,
    )  # fmt: skip
    text = compare_report.write_markdown(tmp_path / "compare.md", args, runs, summary, ["val", "test"])
    assert "| tap | s0 +3.0, s1 -1.0 | +1.0 ± 2.8 | s0 +0.0, s1 +5.0 | +2.5 ± 3.5 |" in text


def test_alignment_cli_writes_table_and_json(tiny_data, tmp_path, capsys):
    import json

    out = tmp_path / "align.json"
    argv = ["--models", "yolov8n.yaml", "--names", "random", "--data", str(tiny_data), "--imgsz", "64"]
    from yolo_tood.tools.commands import alignment as alignment_command

    alignment_command.main([*argv, "--batch", "2", "--json", str(out)])
    assert "| random |" in capsys.readouterr().out
    payload = json.loads(out.read_text())
    assert payload["models"]["random"]["num_images"] == 3
    assert payload["settings"]["conf"] == 0.05


def test_compare_helpers():
    from yolo_tood.tools.analysis import report
    from yolo_tood.tools.commands import compare
    from yolo_tood.tools.compare import models as compare_models

    assert compare_models.model_labels(["stock", "stock", "tood"]) == ["stock", "stock_2", "tood"]
    assert compare_models.model_cfg("stock", "s") == "yolov8s.yaml"
    assert report.mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "n": 2}
    assert report.mean_std([1.0]) == {"mean": 1.0, "std": None, "n": 1}
    assert report.pm({"mean": 0.5, "std": 0.25, "n": 2}) == "0.500 ± 0.250"
    assert report.json_clean({"a": [float("nan"), 1.0]}) == {"a": [None, 1.0]}
    args = compare.parse_args(
        ["--data", "d.yaml", "--seeds", "0", "1", "--models", "stock", "tood", "--out", "rel/dir"]
    )
    assert args.seeds == [0, 1] and args.out.is_absolute() and args.optimizer == "auto" and not args.val_only
    assert compare.parse_args(["--data", "d.yaml", "--val-only"]).val_only


def test_compare_tood_variants(tmp_path):
    import yaml

    from yolo_tood.tools.compare import models as compare_models

    variant = "tood:atss_epochs=0,box_gain=7.5,feat_channels=512"
    assert compare_models.parse_variant(variant) == {"atss_epochs": 0, "box_gain": 7.5, "feat_channels": 512}
    assert compare_models.model_labels([variant, "tood"]) == ["tood-atss_epochs0_box_gain7.5_feat_channels512", "tood"]
    path = Path(compare_models.model_cfg(variant, "n", tmp_path))
    assert path.name == "yolov8n-tood-atss_epochs0_box_gain7.5_feat_channels512.yaml"
    cfg = yaml.safe_load(path.read_text())
    from yolo_tood.train.hyp import TOODHyp

    hyp = TOODHyp.from_yaml(cfg)
    assert (cfg["atss_epochs"], cfg["box_gain"], hyp.cls_gain) == (0, 7.5, 1.0)  # untouched keys keep defaults
    shipped = ["gn", "faithful", "linear", "distribution"]  # yolov8-tood.yaml's row after stacked_convs
    assert cfg["head"][-1][3] == ["nc", 512, 3, *shipped]  # the other args keep the packaged YAML's
    sepbn = yaml.safe_load(Path(compare_models.model_cfg("tood:norm=sepbn", "n", tmp_path)).read_text())
    assert sepbn["head"][-1][3] == ["nc", 256, 3, "sepbn", *shipped[1:]]
    reference = yaml.safe_load(Path(compare_models.model_cfg("tood:quality=features", "n", tmp_path)).read_text())
    assert reference["head"][-1][3] == ["nc", 256, 3, *shipped[:-1], "features"]

    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(str(path), nc=3, verbose=False)
    assert model.model[-1].feat_channels == 128  # 512 x width 0.25 at scale n
    # the warm-up keys: atss_epochs (int | None in TOODHyp) stays an int, atss_fraction is a float
    assert compare_models.parse_variant("tood:atss_fraction=0.5,atss_epochs=3") == {
        "atss_fraction": 0.5,
        "atss_epochs": 3,
    }
    bad_items = ("tood:atss_epochs=2.5", "tood:atss_fraction=1", "tood:atss_fraction=-0.1")
    for bad in ("tood:", "tood:atss_epochs", "tood:lr=0.1", "tood:box_gain=abc", "tood:atss_epochs=-1", *bad_items):
        with pytest.raises(ValueError):
            compare_models.parse_variant(bad)


def test_compare_head_arguments_are_the_head_tables(tmp_path, monkeypatch):
    """compare's variants take the head arguments of the head table (integration/heads.py), TAPDetect's quality
    included, with the values the table names; a table without an argument makes compare refuse it."""
    from dataclasses import replace

    import yaml

    from yolo_tood.integration import heads
    from yolo_tood.tools.compare import models as compare_models

    assert compare_models.parse_variant("tap:quality=both") == {"quality": "both"}
    path = Path(compare_models.model_cfg("tap:quality=both", "n", tmp_path))
    assert yaml.safe_load(path.read_text())["head"][-1][3] == ["nc", "faithful", "none", "both"]  # defaults before
    with pytest.raises(ValueError, match="bad value 'best' for quality .*: use one of features, distribution, both"):
        compare_models.parse_variant("tap:quality=best")
    with pytest.raises(ValueError, match="bad tood variant item 'interact=none'"):
        compare_models.parse_variant("tood:interact=none")  # TAPDetect's argument, not TOODDetect's
    for kind, name in compare_models.HEAD_MODELS.items():
        spec = heads.head_spec(name)
        assert list(compare_models.head_row_args(kind)) == list(spec.yaml_args)
        assert f"{', '.join(spec.yaml_args)} for {kind}" in compare_models.head_args_help()
    tap = heads.head_spec("TAPDetect")
    monkeypatch.setitem(heads._BY_NAME, "TAPDetect", replace(tap, yaml_args=tap.yaml_args[:-1]))
    with pytest.raises(ValueError, match="bad tap variant item 'quality=both'"):
        compare_models.parse_variant("tap:quality=both")
    assert "tap, interact for tap" in compare_models.head_args_help()


def test_alignment_reruns_at_batch_1_when_nms_runs_out_of_time(tiny_data, tmp_path, monkeypatch):
    """The alignment run switches TOOD's pre-NMS bound off; if ultralytics' NMS then hits its time limit (a busy CPU,
    many classes), the counts are void, so it runs again one image at a time, and fails if that hits it too."""
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    import yolo_tood.tools.analysis.validator as val_mod
    from yolo_tood.tools.analysis.nms_guard import NMSTimeLimitError

    batches = []
    original = val_mod.AlignmentValidator.__call__

    def busy(self, *a, limit_at_batch_1=False, **k):
        batches.append(self.args.batch)
        out = original(self, *a, **k)
        if self.args.batch > 1 or limit_at_batch_1:
            LOGGER.warning("NMS time limit 2.100s exceeded")  # what ultralytics logs when it drops detections
        return out

    monkeypatch.setattr(val_mod.AlignmentValidator, "__call__", busy)
    model = YOLO("yolov8n.yaml")
    res = evaluate_alignment(model, tiny_data, split="val", imgsz=64, batch=2, save_dir=tmp_path, workers=0)
    assert batches == [2, 1]  # re-run one image at a time
    check_result(res, n_images=3, n_objects=6)
    monkeypatch.setattr(
        val_mod.AlignmentValidator, "__call__", lambda self, *a, **k: busy(self, *a, limit_at_batch_1=True, **k)
    )
    with pytest.raises(NMSTimeLimitError, match="batch-1 alignment run"):
        evaluate_alignment(model, tiny_data, split="val", imgsz=64, batch=2, save_dir=tmp_path, workers=0)
