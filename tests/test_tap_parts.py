"""Switching one part of TAP off in a trained model (``yolo_tood.tools.analysis.tap_parts``), checked against hand-built
equivalents: M off ranks by the cls branch alone, offsets off measures every side from its anchor."""

from __future__ import annotations

import copy

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from yolo_tood.nn.head import TOODDetect
from yolo_tood.tools.analysis.tap_parts import M_OFF_LOGIT, predictors, switch_off, tap_head


def model(cfg: str) -> DetectionModel:
    """A model whose M and offsets vary over the map, as trained ones do (a fresh TAP head has both constant)."""
    torch.manual_seed(0)
    net = DetectionModel(cfg, nc=3, verbose=False)
    head = net.model[-1]
    for name in ("cls_prob", "reg_offset"):
        for predictor in predictors(head, name):
            torch.nn.init.normal_(predictor[-1].weight, std=0.5)
            torch.nn.init.normal_(predictor[-1].bias, std=0.5)
    head.nms_pre = 0
    return net.eval()


def cls_logits(net: DetectionModel, x: torch.Tensor) -> torch.Tensor:
    """The cls logits (B, nc, A) of the head, read from its cls layers (stock cv3's last, or tood_cls) by hooks."""
    head, out = net.model[-1], []
    layers = [branch[-1] for branch in head.cv3] if head.cv3 is not None else [head.tood_cls]
    hooks = [layer.register_forward_hook(lambda _m, _i, o: out.append(o)) for layer in layers]
    with torch.no_grad():
        net(x)
    for hook in hooks:
        hook.remove()
    return torch.cat([o.flatten(2) for o in out], 2)


@pytest.mark.parametrize("cfg", ["yolov8n-tap.yaml", "yolov8n-tood.yaml"])
def test_m_off_scores_are_the_cls_probability_alone(cfg):
    net, x = model(cfg), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = net(x)[0]
    logits = cls_logits(net, x)
    switch_off(net, "m")
    with torch.no_grad():
        after = net(x)[0]
    torch.testing.assert_close(after[:, 4:], logits.sigmoid().sqrt(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(after[:, :4], before[:, :4])  # the boxes are untouched
    assert not torch.allclose(after[:, 4:], before[:, 4:], atol=1e-3)  # M did re-weight the scores before


@pytest.mark.parametrize("cfg", ["yolov8n-tap.yaml", "yolov8n-tood.yaml"])
def test_offsets_off_boxes_are_the_zero_offset_boxes(cfg):
    net, x = model(cfg), torch.rand(1, 3, 64, 64)
    zero = copy.deepcopy(net)
    for predictor in predictors(zero.model[-1], "reg_offset"):
        torch.nn.init.zeros_(predictor[-1].weight)
        torch.nn.init.zeros_(predictor[-1].bias)
    with torch.no_grad():
        before, expected = net(x)[0], zero(x)[0]
        after = switch_off(net, "offsets")(x)[0]
    torch.testing.assert_close(after, expected, atol=1e-4, rtol=1e-5)
    assert not torch.allclose(after[:, :4], before[:, :4], atol=1e-2)  # the offsets did move the sides before


def test_bad_part_or_head_is_refused():
    with pytest.raises(ValueError, match="unknown TAP part 'M'"):
        switch_off(model("yolov8n-tap.yaml"), "M")
    stock = DetectionModel("yolov8n.yaml", nc=3, verbose=False)
    assert tap_head(stock) is None
    with pytest.raises(ValueError, match="no task-aligned head"):
        switch_off(stock, "m")


def test_alignment_rows_per_part_only_for_heads_that_have_it(monkeypatch, tmp_path):
    """``yolo-tood alignment --tap-parts``: no rows for stock, no offsets row for a tap="none" head."""
    from yolo_tood.paths import CFG_DIR
    from yolo_tood.tools.commands import alignment

    none_yaml = tmp_path / "yolov8n-tap-none.yaml"
    none_yaml.write_text(
        (CFG_DIR / "yolov8-tap.yaml").read_text().replace("TAPDetect, [nc]]", "TAPDetect, [nc, none]]")
    )
    seen = {}
    monkeypatch.setattr(alignment, "evaluate_alignment", lambda yolo, data, **kw: seen.setdefault(len(seen), yolo))
    results = alignment.evaluate_tap_parts(
        ["yolov8n.yaml", "yolov8n-tap.yaml", str(none_yaml)], "data.yaml", ["stock", "tap", "none"], imgsz=64
    )
    assert list(results) == ["tap (M off)", "tap (offsets off)", "none (M off)"]
    tap_m_off, tap_offsets_off = (tap_head(results[k].model) for k in ("tap (M off)", "tap (offsets off)"))
    assert all((p[-1].bias == 30.0).all() for p in tap_m_off.cls_prob) and tap_m_off.reg_offset is not None
    assert tap_offsets_off.reg_offset is None and tap_head(results["none (M off)"].model).tap == "none"


def test_predictors_lists_each_level_or_the_shared_one():
    tap, tood = (
        DetectionModel(cfg, nc=3, verbose=False).model[-1] for cfg in ("yolov8n-tap.yaml", "yolov8n-tood.yaml")
    )
    assert [len(predictors(tap, n)) for n in ("cls_prob", "reg_offset")] == [tap.nl, tap.nl]
    assert predictors(tood, "cls_prob") == [] and predictors(tood, "reg_offset") == [tood.reg_offset]  # M: DGQP
    tood = TOODDetect(nc=3, feat_channels=16, stacked_convs=2, quality="features", ch=(16, 32, 64))
    assert predictors(tood, "cls_prob") == [tood.cls_prob]
    tap.reg_offset = None  # tap="none"
    assert predictors(tap, "reg_offset") == []


@pytest.mark.parametrize("cfg", ["yolo26n-tap.yaml", "yolo26n-tood.yaml"])
def test_both_branches_of_an_end_to_end_head_are_switched(cfg):
    """YOLO26: ``m`` makes every M predictor of both branches give M_OFF_LOGIT; ``offsets`` zeroes both branches'."""
    torch.manual_seed(0)
    net, img = DetectionModel(cfg, nc=3, verbose=False), torch.rand(1, 3, 64, 64)
    head = net.model[-1]
    assert head.branch_prefixes() == ["", "one2one_"]
    switch_off(net, "m")
    outputs = []
    lasts = [p[-1] for prefix in head.branch_prefixes() for p in predictors(head, f"{prefix}cls_prob")]
    hooks = [last.register_forward_hook(lambda m, i, o: outputs.append(o)) for last in lasts]
    with torch.no_grad():
        net.train()(img)
    for h in hooks:
        h.remove()
    assert len(outputs) == 2 * 3 and all(torch.all(o == M_OFF_LOGIT) for o in outputs)  # 2 branches x 3 levels
    switch_off(net, "offsets")
    with torch.no_grad():
        out = net.train()(img)
    assert all(torch.all(out[b]["offsets"] == 0) for b in ("one2many", "one2one"))
