"""ATSS coverage before training (yolo_tood.tools.analysis.coverage, yolo-tood coverage) on a hand-made dataset."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from yolo_tood.tools.analysis.coverage import atss_coverage, coverage_table, level_anchors

# xyxy pixels in a 320 x 320 image: a large GT whose ATSS threshold lies above all its candidates (see
# test_min_size.bimodal_scene), a 40 x 30 GT that the reference covers, and a 2.5 px GT with no anchor centre of any
# level inside it
BOXES = {0: (67.0, 70.5, 253.0, 249.5), 1: (6.0, 6.0, 46.0, 36.0), 2: (13.0, 13.0, 15.5, 15.5)}


def hand_dataset(root: Path) -> Path:
    """One 320 x 320 image with the three boxes of BOXES (classes big, mid, tiny), as train and val."""
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        cv2.imwrite(str(root / "images" / split / "a.jpg"), np.zeros((320, 320, 3), np.uint8))
        rows = []
        for c, (x1, y1, x2, y2) in BOXES.items():
            rows.append(f"{c} {(x1 + x2) / 640} {(y1 + y2) / 640} {(x2 - x1) / 320} {(y2 - y1) / 320}")
        (root / "labels" / split / "a.txt").write_text("\n".join(rows) + "\n")
    data = root / "data.yaml"
    data.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: big\n  1: mid\n  2: tiny\n")
    return data


def test_level_anchors_are_make_anchors_points():
    import torch
    from ultralytics.utils.tal import make_anchors

    feats = [torch.zeros(1, 1, 320 // s, 320 // s) for s in (8, 16, 32)]
    points, strides = make_anchors(feats, torch.tensor([8.0, 16.0, 32.0]), 0.5)
    anc, col = level_anchors(320)
    assert torch.equal(anc, points * strides) and torch.equal(col, strides)


def test_coverage_counts_and_reasons(tmp_path):
    data = hand_dataset(tmp_path)
    ref = atss_coverage(data, imgsz=320)
    assert ref.total == 3 and ref.total_zero == 2
    assert ref.zero == {"big": 1, "mid": 0, "tiny": 1, ">=96": 1, "32-96": 0, "<8": 1}
    assert ref.reasons == {"threshold": 1, "outside": 1}  # big: mean + std above all; tiny: no centre inside
    fixed = atss_coverage(data, imgsz=320, min_pos=1)
    assert fixed.zero["big"] == 0 and fixed.zero["tiny"] == 1 and fixed.reasons == {"threshold": 0, "outside": 1}
    both = atss_coverage(data, imgsz=320, min_pos=1, min_size=16.0)
    assert both.total_zero == 0 and both.share() == 0.0 and both.share("nothing") is None
    table = coverage_table({"reference": ref, "both": both}).splitlines()
    assert table[2] == "| all | 3 | 66.7% (2) | 0.0% (0) |"
    assert "| big | 1 | 100.0% (1) | 0.0% (0) |" in table


def test_script_settings(tmp_path, capsys):
    from yolo_tood.tools.commands import coverage as script

    assert script.parse_setting("reference") == {"topk": 9, "min_pos": 0, "min_size": 0.0}
    assert script.parse_setting("atss_min_pos=1,tal_min_size=16") == {"topk": 9, "min_pos": 1, "min_size": 16.0}
    with pytest.raises(ValueError, match="bad setting item 'tal_topk=3'"):
        script.parse_setting("tal_topk=3")
    with pytest.raises(ValueError, match="atss_min_pos"):
        script.parse_setting("atss_min_pos=-1")
    out = script.main(["--data", str(hand_dataset(tmp_path)), "--settings", "reference", "atss_min_pos=1"])
    assert [c.total_zero for c in out.values()] == [2, 1]
    assert "| big | 1 | 100.0% (1) | 0.0% (0) |" in capsys.readouterr().out
