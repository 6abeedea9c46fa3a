"""TAPDetect: the stock YOLO head with TOOD's task-aligned predictor, which fine-tunes from stock checkpoints.

What it must show (issue: a pretrained-compatible TOOD head): every stock tensor keeps its name and shape, so a stock
checkpoint transfers exactly what it transfers into a stock model; right after loading it the model predicts the
stock boxes with scores that are a monotone map of stock's; the new predictor learns from the first step.
"""

from __future__ import annotations

import math
from pathlib import Path
from unittest import mock

import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import intersect_dicts

from yolo_tood.nn.head import DFLExpectation
from yolo_tood.nn.tap_head import TAP_PRIOR_PROB, TAPDetect
from yolo_tood.paths import CFG_DIR

FAMILIES = ("yolov8", "yolo11")


# (interact, quality) settings of the head beside the shipped default
VARIANTS = [("none", "features"), ("box_to_cls", "features"), ("none", "distribution"), ("none", "both")]


def tap_cfg(family: str = "yolov8", scale: str = "n", interact: str = "none", quality: str = "features") -> str | dict:
    """The packaged ``{family}{scale}-tap.yaml`` by its bare name (the shipped row, ``[nc]``), or as a model dict with
    the head's ``interact`` and ``quality`` arguments set."""
    from ultralytics.nn.tasks import yaml_model_load

    if (interact, quality) == ("none", "features"):
        return f"{family}{scale}-tap.yaml"
    cfg = yaml_model_load(f"{family}{scale}-tap.yaml")
    cfg["head"][-1][3] = ["nc", "faithful", interact, quality]
    return cfg


def stock_and_tap(
    family: str, nc: int, scale: str = "n", interact: str = "none", quality: str = "features"
) -> tuple[DetectionModel, DetectionModel]:
    torch.manual_seed(0)
    return (
        DetectionModel(f"{family}{scale}.yaml", nc=nc, verbose=False),
        DetectionModel(tap_cfg(family, scale, interact, quality), nc=nc, verbose=False),
    )


@pytest.fixture(scope="module")
def trained_stock(tmp_path_factory) -> Path:
    """A stock yolov8n checkpoint trained (one epoch, 64 px) and saved by ultralytics' trainer."""
    from test_diagnostics import make_dataset

    root = tmp_path_factory.mktemp("tap_stock")
    data = make_dataset(root / "data", n_train=4, n_val=2)
    torch.manual_seed(0)
    YOLO("yolov8n.yaml").train(
        data=str(data), epochs=1, imgsz=64, batch=2, workers=0, device="cpu", project=str(root), name="stock",
        plots=False, val=False,
    )  # fmt: skip
    return root / "stock" / "weights" / "last.pt"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_stock_tensor_keeps_its_name_and_shape(family):
    stock, tap = stock_and_tap(family, nc=80)
    stock_sd, tap_sd = stock.state_dict(), tap.state_dict()
    assert {k: v.shape for k, v in stock_sd.items()} == {k: tap_sd[k].shape for k in stock_sd}
    new = sorted({k.split(".")[2] for k in set(tap_sd) - set(stock_sd)})
    assert new == ["cls_prob", "reg_offset"]  # the task-aligned predictor is the only addition
    head = tap.model[-1]
    assert isinstance(head, TAPDetect) and head.legacy == (family == "yolov8")  # YOLOv8's cls branch, YOLO11's DW one


def test_its_dfl_is_stocks_function_in_the_faster_layout():
    """TAP decodes distances per level (validity test) and for the boxes: DFLExpectation, stock's DFL re-arranged."""
    stock, tap = stock_and_tap("yolov8", nc=7)
    dfl = tap.model[-1].dfl
    assert isinstance(dfl, DFLExpectation) and "model.22.dfl.conv.weight" in tap.state_dict()
    x = torch.randn(2, 64, 50)
    torch.testing.assert_close(dfl(x), stock.model[-1].dfl(x), atol=1e-5, rtol=1e-5)
    with mock.patch("torch.onnx.is_in_onnx_export", return_value=True):  # the form an ONNX export traces
        torch.testing.assert_close(dfl(x), stock.model[-1].dfl(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("source_nc,nc", [(80, 80), (80, 7), (3, 7)])
def test_a_stock_checkpoint_transfers_what_it_transfers_into_stock(family, source_nc, nc):
    """``DetectionModel.load`` into TAPDetect takes every tensor it takes into a stock model, cv3 rebuild included."""
    source, _ = stock_and_tap(family, nc=source_nc)
    counts = {}
    for kind in ("stock", "tap"):
        torch.manual_seed(1)
        model = DetectionModel(f"{family}n{'-tap' if kind == 'tap' else ''}.yaml", nc=nc, verbose=False)
        model.load(source, verbose=False)
        taken = intersect_dicts(source.state_dict(), model.state_dict())
        counts[kind] = set(taken)
        for k in taken:
            torch.testing.assert_close(model.state_dict()[k], source.state_dict()[k], msg=k)
        if kind == "tap":  # the predictor follows cv3's width after load rebuilt cv3 at the source width
            head = model.model[-1]
            assert head.cls_prob[0][0].in_channels == head.cv2[0][-1].in_channels + head.cv3[0][-1].in_channels
            model.eval()(torch.zeros(1, 3, 64, 64))
    assert counts["tap"] == counts["stock"] and len(counts["stock"]) > 300


@pytest.mark.parametrize("interact,quality", VARIANTS)
def test_it_starts_as_the_stock_checkpoint(trained_stock, interact, quality):
    """Same boxes, scores sqrt(TAP_PRIOR_PROB * p): same ranking, and p = 0.25 maps to 0.25 (predict's conf)."""
    stock = YOLO(trained_stock).model.float().eval()
    torch.manual_seed(3)
    tap = DetectionModel(tap_cfg(interact=interact, quality=quality), nc=stock.nc, verbose=False)
    assert (tap.model[-1].cls_from_box is not None) == (interact == "box_to_cls")
    assert (tap.model[-1].dgqp is not None) == (quality != "features")
    assert (tap.model[-1].cls_prob is not None) == (quality != "distribution")
    tap.load(torch.load(trained_stock, weights_only=False), verbose=False)
    tap.eval().model[-1].nms_pre = 0  # every score, for the element-wise comparison
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        ref, out = stock(x)[0], tap(x)[0]
    torch.testing.assert_close(out[:, :4], ref[:, :4], atol=1e-3, rtol=0)  # pixels
    torch.testing.assert_close(out[:, 4:], (TAP_PRIOR_PROB * ref[:, 4:]).sqrt(), atol=1e-6, rtol=1e-5)
    assert math.isclose(math.sqrt(TAP_PRIOR_PROB * 0.25), 0.25)
    order_ref = ref[:, 4:].flatten(1).argsort(dim=1, descending=True, stable=True)[:, :500]
    order_out = out[:, 4:].flatten(1).argsort(dim=1, descending=True, stable=True)[:, :500]
    assert torch.equal(order_ref, order_out)


def test_the_predictor_learns_from_the_first_step():
    """Zero last weights get gradients: one optimiser step moves M, the offsets and cls_from_box off their no-op."""
    from test_loss import random_batch

    torch.manual_seed(0)
    model = DetectionModel(tap_cfg(interact="box_to_cls"), nc=3, verbose=False).train()
    head = model.model[-1]
    head.epoch = 0  # TAL at the first epoch: the -tap configs have no warm-up (atss_fraction 0), at any run length
    batch = {**random_batch([3, 2], nc=3), "img": torch.rand(2, 3, 64, 64)}
    loss, _ = model.loss(batch, model(batch["img"]))
    loss.sum().backward()
    for name in ("cls_prob", "reg_offset", "cls_from_box"):
        convs = [p[-1] if isinstance(p, torch.nn.Sequential) else p for p in getattr(head, name)]
        grads = [c.weight.grad for c in convs]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads), name


def test_box_to_cls_feeds_the_box_feature_into_the_cls_prediction():
    """interact=box_to_cls: cls logits are cv3's last conv of (cls feature + cls_from_box(box feature)), per level."""
    torch.manual_seed(0)
    head = TAPDetect(nc=3, interact="box_to_cls", ch=(16, 32, 64)).train()
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    x = [torch.randn(1, c, 8 // 2**i, 8 // 2**i) for i, c in enumerate((16, 32, 64))]
    with torch.no_grad():
        for conv in head.cls_from_box:
            conv.weight.normal_(std=0.1)
        scores = head(x)["scores"]  # (1, 3, A) aligned scores
        m = torch.sigmoid(head.cls_prob[0][-1].bias)  # M's last conv has zero weights: sigmoid(M) = sigmoid(bias)
        box_feat, cls_feat = head.cv2[0][:-1](x[0]), head.cv3[0][:-1](x[0])
        cls = head.cv3[0][-1](cls_feat + head.cls_from_box[0](box_feat)).flatten(2)  # level 0: the first 64 anchors
        torch.testing.assert_close(scores[..., :64], (torch.sigmoid(cls) * m).sqrt())
        stock_cls = head.cv3[0](x[0]).flatten(2)
        assert not torch.allclose(scores[..., :64], (torch.sigmoid(stock_cls) * m).sqrt())  # the path is used


def test_a_checkpoint_from_before_interact_still_runs():
    """A TAPDetect unpickled from before ``interact`` existed has neither attribute: it runs as ``interact="none"``."""
    torch.manual_seed(0)
    head = TAPDetect(nc=3, ch=(16, 32, 64)).eval()
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    x = [torch.randn(1, c, 8 // 2**i, 8 // 2**i) for i, c in enumerate((16, 32, 64))]
    with torch.no_grad():
        ref = head(x)[0]
        del head.cls_from_box, head.interact  # as an older pickle: the attributes were never set
        assert not hasattr(head, "cls_from_box")
        torch.testing.assert_close(head(x)[0], ref)


def test_tap_none_has_no_offsets():
    head = TAPDetect(nc=3, tap="none", ch=(16, 32, 64))
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    out = head.train()([torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4), torch.randn(1, 64, 2, 2)])
    assert head.reg_offset is None and not out["offsets"].any()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tap": "deform"}, "TAPDetect: tap must be one of faithful, none, got 'deform'"),
        ({"interact": "both"}, "TAPDetect: interact must be one of none, box_to_cls, got 'both'"),
        ({"quality": "iou"}, "TAPDetect: quality must be one of features, distribution, both, got 'iou'"),
        ({"quality": "distribution", "reg_max": 1}, "TAPDetect: quality 'distribution' reads the DFL box distrib"),
        ({"quality": "both", "reg_max": 1}, "a reg_max 1 head does not have"),
        ({"nc": 0}, "nc"),
        ({"ch": ()}, "no input levels"),
    ],
)
def test_bad_arguments_are_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TAPDetect(**{"nc": 3, "ch": (16, 32, 64), **kwargs})


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scale", list("nsmlx"))
@pytest.mark.parametrize("interact,quality", VARIANTS)
def test_budget_params_and_gflops_within_five_percent_of_stock(family, scale, interact, quality):
    """The predictor's cost at 640 px and 80 classes: params and GFLOPs <= 1.05x stock at every scale."""
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    stock, tap = stock_and_tap(family, nc=80, scale=scale, interact=interact, quality=quality)
    assert get_num_params(tap) <= 1.05 * get_num_params(stock)
    assert get_flops(tap, 640) <= 1.05 * get_flops(stock, 640)


def test_tap_configs_ship_with_the_tood_ones():
    assert (CFG_DIR / "yolov8-tap.yaml").is_file() and (CFG_DIR / "yolo11-tap.yaml").is_file()
    for family in FAMILIES:  # the stock layers of ultralytics' own YAML, the head row aside
        import yaml
        from ultralytics.nn.tasks import yaml_model_load

        tap = yaml.safe_load((CFG_DIR / f"{family}-tap.yaml").read_text())
        stock = yaml_model_load(f"{family}.yaml")
        assert tap["backbone"] == stock["backbone"] and tap["head"][:-1] == stock["head"][:-1]
        assert tap["head"][-1][2] == "TAPDetect" and stock["head"][-1][2] == "Detect"


def test_the_trainer_transfers_as_many_tensors_as_into_stock(trained_stock, tmp_path, log):
    """``train(pretrained=stock.pt)``: ultralytics' "Transferred N/M items" has the same N for TAP as for stock."""
    import re

    from test_diagnostics import make_dataset

    data = make_dataset(tmp_path / "data", n_train=2, n_val=2)
    kw = dict(data=str(data), epochs=1, imgsz=64, batch=2, workers=0, device="cpu", plots=False, val=False)
    counts = {}
    for cfg in ("yolov8n.yaml", "yolov8n-tap.yaml"):
        del log[:]
        YOLO(cfg).train(pretrained=str(trained_stock), project=str(tmp_path), name=cfg, **kw)
        lines = [m for m in log if m.startswith("Transferred")]
        assert lines, log[-20:]
        counts[cfg] = tuple(int(v) for v in re.findall(r"\d+", lines[0])[:2])
    (stock_n, stock_m), (tap_n, tap_m) = counts["yolov8n.yaml"], counts["yolov8n-tap.yaml"]
    assert tap_n == stock_n and tap_m == stock_m + 24  # 3 levels x 2 predictors x 2 convs x (weight, bias)


def _randomise_predictors(model: DetectionModel) -> None:
    """Non-zero last convs of M and O (they start at zero), so that a merge that mixed them up would show."""
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "cls_prob" in name or "reg_offset" in name:
            torch.nn.init.normal_(p, std=0.05)


@pytest.mark.parametrize("interact,quality", VARIANTS)
def test_fuse_runs_m_and_o_as_one_with_the_same_outputs(interact, quality):
    """``fuse`` replaces each level's cls_prob and reg_offset by one MergedPredictors: the same maps as before."""
    from yolo_tood.nn.head import MergedPredictors

    _, tap = stock_and_tap("yolov8", nc=5, interact=interact, quality=quality)
    _randomise_predictors(tap)
    tap.eval().model[-1].nms_pre = 0
    x = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        before, before_preds = tap(x)
        tap.fuse(verbose=False)
        after, after_preds = tap(x)
    head = tap.model[-1]
    merged = quality != "distribution"  # a distribution-only M has no cls_prob: nothing to merge with O
    assert (getattr(head, "merged_predictors", None) is not None) == merged
    if merged:
        assert all(isinstance(m, MergedPredictors) for m in head.merged_predictors) and len(head.merged_predictors) == 3
        assert head.cls_prob is None and head.reg_offset is None
    for key in ("boxes", "offsets", "scores"):
        torch.testing.assert_close(after_preds[key], before_preds[key], atol=1e-5, rtol=1e-5, msg=key)
    torch.testing.assert_close(after, before, atol=1e-3, rtol=1e-5)


def test_merged_predictors_export_the_plain_convs_with_the_same_values():
    """In an ONNX export MergedPredictors runs four plain convs (onnxruntime's grouped conv is slower): same values."""
    from yolo_tood.nn.head import MergedPredictors
    from yolo_tood.nn.tap_head import _predictor

    torch.manual_seed(0)
    prob, offset = _predictor(24, 1), _predictor(24, 8)
    for p in (*prob.parameters(), *offset.parameters()):
        torch.nn.init.normal_(p, std=0.1)
    merged = MergedPredictors(prob, offset)
    x = torch.randn(2, 24, 7, 9)
    with torch.no_grad(), mock.patch("torch.onnx.is_in_onnx_export", return_value=True):
        plain_m, plain_o = merged(x)
    with torch.no_grad():
        m, o = merged(x)
        torch.testing.assert_close(m, prob(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(o, offset(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(plain_m, prob(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(plain_o, offset(x), atol=1e-5, rtol=1e-5)
    assert m.shape == (2, 1, 7, 9) and o.shape == (2, 8, 7, 9)
    with pytest.raises(ValueError, match="one feature at one hidden width"):
        MergedPredictors(prob, _predictor(48, 8))


def test_merged_predictors_run_the_stock_convs_too_with_the_same_values():
    """Given the level's last box and cls convs, ``forward_branches`` gives what those convs and the predictors on the
    concatenated feature give, in PyTorch and in the plain convs of an ONNX export."""
    from yolo_tood.nn.head import MergedPredictors
    from yolo_tood.nn.tap_head import _predictor

    torch.manual_seed(0)
    box_conv, cls_conv = torch.nn.Conv2d(16, 64, 1), torch.nn.Conv2d(24, 5, 1)
    prob, offset = _predictor(40, 1), _predictor(40, 8)
    for p in (*prob.parameters(), *offset.parameters()):
        torch.nn.init.normal_(p, std=0.1)
    merged = MergedPredictors(prob, offset, box_conv, cls_conv)
    box_feat, cls_feat = torch.randn(2, 16, 7, 9), torch.randn(2, 24, 7, 9)
    feat = torch.cat((box_feat, cls_feat), 1)
    with torch.no_grad():
        expected = (box_conv(box_feat), cls_conv(cls_feat), prob(feat), offset(feat))
        outs = [merged.forward_branches(box_feat, cls_feat)]
        with mock.patch("torch.onnx.is_in_onnx_export", return_value=True):
            outs.append(merged.forward_branches(box_feat, cls_feat))
    for out in outs:
        for got, ref in zip(out, expected):
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="1x1 convs of the predictors' input"):
        MergedPredictors(prob, offset, torch.nn.Conv2d(8, 64, 1), cls_conv)


def test_a_fused_head_refuses_hooks_and_part_switches_in_one_line():
    """The merged predictors were built from the weights at fuse time: hooking or editing cls_prob then is refused."""
    from yolo_tood.tools.analysis.tap_parts import switch_off

    _, tap = stock_and_tap("yolov8", nc=5)
    tap.eval().fuse(verbose=False)
    with pytest.raises(ValueError, match="needs an unfused model"):
        tap.model[-1].map_modules()
    with pytest.raises(ValueError, match="needs an unfused model"):
        switch_off(tap, "m")
