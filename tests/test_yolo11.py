"""YOLO11-TOOD: YOLO11's backbone and neck exactly as ultralytics' yolo11.yaml, the T-Head within the size budgets."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import ultralytics
import yaml
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import get_flops, get_num_params
from yolo_tood.head import TOODDetect
from yolo_tood.hyp import TOODHyp

ROOT = Path(__file__).resolve().parents[1]
TOOD_YAML = ROOT / "cfg" / "yolo11-tood.yaml"
STOCK_YAML = Path(ultralytics.__file__).parent / "cfg" / "models" / "11" / "yolo11.yaml"
V8_TOOD_YAML = ROOT / "cfg" / "yolov8-tood.yaml"
EXPECTED_HEAD = {"n": (40, 2), "s": (80, 2), "m": (160, 2), "l": (160, 3), "x": (240, 3)}  # (C, S) after scaling


def test_same_backbone_neck_scales_and_tood_keys():
    tood, stock = yaml.safe_load(TOOD_YAML.read_text()), yaml.safe_load(STOCK_YAML.read_text())
    assert tood["scales"] == stock["scales"] and tood["backbone"] == stock["backbone"]
    assert tood["head"][:-1] == stock["head"][:-1]  # the neck; only the Detect row differs
    assert stock["head"][-1][:3] == [[16, 19, 22], 1, "Detect"] and tood["head"][-1][:3] == [
        [16, 19, 22],
        1,
        "TOODDetect",
    ]
    v8 = yaml.safe_load(V8_TOOD_YAML.read_text())
    keys = set(TOODHyp.__dataclass_fields__)
    assert {k: tood[k] for k in keys if k in v8} == {k: v8[k] for k in keys if k in v8}  # same TOOD hyper-parameters


@pytest.mark.parametrize("scale", list("nsmlx"))
def test_every_scale_builds_within_budget(scale):
    """At nc=80 and 640 px as ``model.info()`` reports: params <= 1.10x and GFLOPs <= 1.15x of stock yolo11{scale}."""
    model = DetectionModel(str(ROOT / "cfg" / f"yolo11{scale}-tood.yaml"), nc=80, verbose=False)
    stock = DetectionModel(f"yolo11{scale}.yaml", nc=80, verbose=False)
    head = model.model[-1]
    assert isinstance(head, TOODDetect) and (head.feat_channels, head.stacked_convs) == EXPECTED_HEAD[scale]
    assert [a.in_channels for a in head.adapters] == [s[0].conv.in_channels for s in stock.model[-1].cv2]
    p, ps, f, fs = get_num_params(model), get_num_params(stock), get_flops(model, 640), get_flops(stock, 640)
    assert p <= 1.10 * ps and 0 < f <= 1.15 * fs, (p / ps, f / fs)
    y, _ = model.eval()(torch.zeros(1, 3, 64, 64))
    assert y.shape == (1, 4 + 80, 8 * 8 + 4 * 4 + 2 * 2)
