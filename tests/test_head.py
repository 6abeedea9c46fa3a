"""Unit tests of the T-Head: shapes, the TaskDecomposition and re-sampling equivalences, TAP's faithful box
re-sampling (an integer offset borrows the neighbour's edge), the invalid-box fallback, and the score gradient."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d
from ultralytics.nn.modules import Detect
from ultralytics.utils.ops import xywh2xyxy

from yolo_tood.nn.head import (
    TaskDecomposition,
    TOODDetect,
    aligned_score,
    keep_valid_boxes,
    offset_distances,
    resample_by_offsets,
    side_shifts,
)


def make_head(nc: int = 3, reg_max: int = 16, ch=(16, 32, 64), feat_channels: int = 32, stacked_convs: int = 3):
    head = TOODDetect(nc, feat_channels, stacked_convs, reg_max=reg_max, ch=ch)
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    return head


def level_inputs(batch: int = 2, imgsz: int = 64, ch=(16, 32, 64)) -> list[torch.Tensor]:
    return [torch.randn(batch, c, imgsz // s, imgsz // s) for c, s in zip(ch, (8, 16, 32))]


@pytest.mark.parametrize("reg_max", [16, 1])
def test_head_output_shapes_per_level(reg_max):
    """Training dict and inference output follow ultralytics' Detect contract, level by level."""
    head, x = make_head(reg_max=reg_max), level_inputs()
    anchors = sum(t.shape[2] * t.shape[3] for t in x)  # 64 + 16 + 4
    out = head.train()(x)
    assert out["boxes"].shape == (2, 4 * reg_max, anchors)
    assert out["offsets"].shape == (2, 8, anchors)
    assert out["scores"].shape == (2, 3, anchors)
    assert [f.shape for f in out["feats"]] == [t.shape for t in x]
    for level, t in enumerate(x):
        boxes, offsets, scores = head.forward_level(t, level)
        assert boxes.shape == (2, 4 * reg_max, *t.shape[2:]) and scores.shape == (2, 3, *t.shape[2:])
        assert offsets.shape == (2, 8, *t.shape[2:])
    y, preds = head.eval()(x)
    assert y.shape == (2, 4 + 3, anchors)
    assert 0 <= y[:, 4:].min() and y[:, 4:].max() <= 1  # aligned scores are probabilities, not re-sigmoided
    torch.testing.assert_close(y[:, 4:], preds["scores"])


def test_initial_scores_match_prior():
    """As the reference, cls and M start at prior 0.01, so the aligned score starts near sqrt(0.01 * 0.01)."""
    head = make_head()
    scores = head.train()(level_inputs())["scores"]
    assert abs(scores.mean().item() - 0.01) < 2e-3


def test_task_decomposition_equals_unfused():
    """The attention-weighted batched matmul equals sum_k w_k * conv1x1_k(feat_k), then GN + ReLU."""
    torch.manual_seed(0)
    c, s = 16, 3
    td = TaskDecomposition(c, s, la_down_rate=2).eval()
    torch.nn.init.normal_(td.layer_attention[0].weight, std=0.1)  # non-trivial attention weights
    torch.nn.init.normal_(td.layer_attention[2].weight, std=1.0)
    feat = torch.randn(2, c * s, 7, 9)
    avg = F.adaptive_avg_pool2d(feat, 1)
    w = td.attention(avg)  # (B, S, 1, 1)
    assert w.std() > 0.01
    per_layer = td.reduction_conv.weight.view(c, s, c)  # (C_out, S, C_in)
    unfused = sum(
        w[:, k : k + 1] * F.conv2d(feat[:, k * c : (k + 1) * c], per_layer[:, k, :, None, None]) for k in range(s)
    )
    expected = F.relu(td.norm(unfused))
    torch.testing.assert_close(td(feat, avg), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("channels_per_side", [16, 1])
def test_resampling_equals_deform_conv_with_unit_kernel(channels_per_side):
    """grid_sample re-sampling equals mmcv-style 1x1 deformable conv with unit weight (torchvision's deform_conv2d)."""
    torch.manual_seed(0)
    b, h, w = 2, 6, 7
    pred = torch.randn(b, 4 * channels_per_side, h, w, dtype=torch.float64)
    offsets = torch.randn(b, 8, h, w, dtype=torch.float64) * 2.5  # some samples land outside: zero padding
    c = pred.shape[1]
    weight = torch.ones(c, 1, 1, 1, dtype=torch.float64)  # depthwise identity: each channel samples itself
    expected = deform_conv2d(pred, offsets, weight)  # 4 offset groups of (dy, dx), as mmcv's layout
    torch.testing.assert_close(resample_by_offsets(pred, offsets), expected, rtol=1e-9, atol=1e-9)


def test_resampling_with_zero_offsets_is_identity_and_integer_offsets_shift():
    torch.manual_seed(0)
    pred = torch.randn(1, 8, 5, 6)
    torch.testing.assert_close(resample_by_offsets(pred, torch.zeros(1, 8, 5, 6)), pred)
    offsets = torch.zeros(1, 8, 5, 6)
    offsets[:, 1] = 1.0  # side 0 samples one pixel to the right
    out = resample_by_offsets(pred, offsets)
    torch.testing.assert_close(out[0, 0:2, :, :-1], pred[0, 0:2, :, 1:])
    assert out[0, 0:2, :, -1].abs().max() == 0  # beyond the border: zero padding, as deformable conv
    torch.testing.assert_close(out[0, 2:], pred[0, 2:])


def test_side_shifts_and_offset_distances_pick_each_sides_own_axis():
    """Offsets (dy, dx) per side in mmcv's layout: left and right move along x, top and bottom along y."""
    offsets = torch.tensor([10.0, 1.0, 2.0, 20.0, 30.0, 5.0, 6.0, 40.0]).view(1, 8, 1, 1)  # dy_l dx_l dy_t dx_t ...
    torch.testing.assert_close(side_shifts(offsets).flatten(), torch.tensor([1.0, 2.0, 5.0, 6.0]))
    torch.testing.assert_close(offset_distances(offsets).flatten(), torch.tensor([-1.0, -2.0, 5.0, 6.0]))


def test_keep_valid_boxes_hand_case():
    """Location 0: faithful box valid, kept with its offsets. Location 1: left + right < 0, the un-resampled
    prediction comes back with zero offsets."""
    original = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]).view(1, 4, 1, 2)
    resampled = torch.tensor([[2.0, -3.0], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]).view(1, 4, 1, 2)
    offsets = torch.full((1, 8, 1, 2), 0.25)
    boxes, kept = keep_valid_boxes(resampled, resampled, offsets, original)
    torch.testing.assert_close(boxes[0, :, 0, 0], torch.tensor([2.0, 0.5, 0.5, 0.5]))
    torch.testing.assert_close(boxes[0, :, 0, 1], torch.tensor([1.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(kept[0, :, 0], torch.full((8, 2), 0.25) * torch.tensor([1.0, 0.0]))


def single_level_head(reg_max: int, seed: int = 0) -> TOODDetect:
    """A one-level head whose box prediction varies across locations, with a zeroed offset conv."""
    torch.manual_seed(seed)
    head = TOODDetect(nc=3, feat_channels=32, stacked_convs=2, reg_max=reg_max, ch=(16,))
    head.stride = torch.tensor([8.0])
    with torch.no_grad():
        if reg_max == 1:  # plain distances exp(log 4 +- small), about 4: every box valid, also with a one-cell offset
            torch.nn.init.normal_(head.tood_reg.weight, std=0.003)
            head.tood_reg.bias.fill_(math.log(4.0))
        else:  # bin logits that differ from location to location
            torch.nn.init.normal_(head.tood_reg.weight, std=0.3)
        head.reg_offset[-1].weight.zero_()  # offsets = the conv's bias, the same at every location
        head.reg_offset[-1].bias.zero_()
    return head.eval()


def decode_xyxy(head: TOODDetect, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Return the head's inference boxes as (B, 4, H, W) xyxy pixels, and its prediction dict."""
    with torch.no_grad():
        y, preds = head([x])
    b, _, h, w = x.shape
    return xywh2xyxy(y[:, :4].transpose(1, 2)).transpose(1, 2).reshape(b, 4, h, w), preds


@pytest.mark.parametrize("reg_max", [16, 1])
@pytest.mark.parametrize(
    "coord, channel, value, dy, dx",
    [
        (0, 1, 1.0, 0, 1),  # left side, dx = +1: x1 of the neighbour to the right
        (1, 2, 1.0, 1, 0),  # top side, dy = +1: y1 of the neighbour below
        (2, 5, -1.0, 0, -1),  # right side, dx = -1: x2 of the neighbour to the left
        (3, 6, -1.0, -1, 0),  # bottom side, dy = -1: y2 of the neighbour above
    ],
)
def test_integer_offset_borrows_the_neighbours_edge(reg_max, coord, channel, value, dy, dx):
    """As MMDetection's TAP (decode, then re-sample the edges): with a one-cell offset for side k, side k of the box
    at every interior location is exactly the edge its neighbour decodes with zero offsets; other sides unchanged."""
    head = single_level_head(reg_max)
    x = torch.randn(2, 16, 6, 7)
    ref, ref_preds = decode_xyxy(head, x)  # zero offsets
    with torch.no_grad():
        head.reg_offset[-1].bias[channel] = value
    out, preds = decode_xyxy(head, x)
    assert (preds["offsets"][:, channel] == value).all()  # no box fell back to the un-resampled prediction
    h, w = x.shape[2:]
    rows, cols = slice(max(-dy, 0), h - max(dy, 0)), slice(max(-dx, 0), w - max(dx, 0))  # interior for this shift
    neighbour = ref[:, coord, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
    torch.testing.assert_close(out[:, coord, rows, cols], neighbour, rtol=0, atol=1e-4)
    assert (out[:, coord, rows, cols] - ref[:, coord, rows, cols]).abs().max() > 0.5  # the edge did move
    others = [c for c in range(4) if c != coord]
    torch.testing.assert_close(out[:, others], ref[:, others], rtol=0, atol=1e-4)


@pytest.mark.parametrize("reg_max", [16, 1])
def test_zero_offsets_decode_as_stock_detect(reg_max):
    """With zero offsets, TAP is the identity: the boxes are ultralytics' Detect decode of the un-resampled
    prediction (re-sampling at zero offset returns its input, see the re-sampling tests)."""
    head = single_level_head(reg_max)
    x = torch.randn(2, 16, 6, 7)
    with torch.no_grad():
        y, preds = head([x])
        torch.testing.assert_close(y[:, :4], Detect._get_decode_boxes(head, preds), rtol=0, atol=0)
    assert (preds["offsets"] == 0).all()


def test_dfl_head_falls_back_where_the_faithful_box_is_invalid():
    """DFL distances are >= 0, but the offset term can make a side negative: a left side measured from one cell to
    the right of a near-zero-width box gives x1 > x2, so the un-resampled prediction and zero offsets are used."""
    head = single_level_head(16)
    x = torch.randn(1, 16, 5, 6)
    with torch.no_grad():
        head.tood_reg.weight.zero_()
        head.tood_reg.bias.zero_()
        head.tood_reg.bias[0::16] = 20.0  # every side's distribution at bin 0: l = t = r = b = 0 (to 1e-7)
    ref, _ = decode_xyxy(head, x)
    with torch.no_grad():
        head.reg_offset[-1].bias[1] = 1.0  # faithful l = 0 - 1 < 0 = -r: invalid, except in the last column
    out, preds = decode_xyxy(head, x)
    offsets = preds["offsets"].view(1, 8, 5, 6)
    assert (offsets[..., :-1] == 0).all()
    torch.testing.assert_close(out[..., :-1], ref[..., :-1])
    # the last column samples beyond the border: zero-padded logits, a uniform distribution, l = 7.5 - 1 >= 0: valid
    assert (offsets[:, 1, :, -1] == 1.0).all()
    torch.testing.assert_close(out[:, 0, :, -1], ref[:, 0, :, -1] - (7.5 - 1.0) * 8.0)
    with torch.no_grad():
        head.reg_offset[-1].bias[1] = -1.0  # faithful l = 0 + 1: valid, x1 one cell (8 px) to the left
    out, preds = decode_xyxy(head, x)
    assert (preds["offsets"][:, 1] == -1.0).all()
    torch.testing.assert_close(out[:, 0, :, 1:], ref[:, 0, :, 1:] - 8.0)  # the left neighbour's x1
    torch.testing.assert_close(out[:, 0, :, 0], ref[:, 0, :, 0] - 8.5 * 8.0)  # padding: l = 7.5 + 1


def test_plain_distance_head_applies_the_fallback():
    """With reg_max 1, only locations whose faithful box is invalid fall back (here a zero-padded border sample)."""
    head = make_head(reg_max=1).train()
    x = level_inputs(batch=1)
    with torch.no_grad():
        for conv in (head.tood_reg, head.reg_offset[-1]):
            conv.weight.zero_()
            conv.bias.zero_()
        head.tood_reg.bias.copy_(torch.tensor([0.5, 1.0, 0.6, 1.0]).log())  # distances exp(x): l = 0.5, r = 0.6
        head.reg_offset[-1].bias[1] = 0.9  # left side measured 0.9 cell to the right
    boxes, offsets, _ = head.forward_level(x[0], 0)
    # interior: l = 0.5 - 0.9 = -0.4, l + r = 0.2 >= 0, kept. Last column: the sample at w - 0.1 reads 0.1 * 0.5
    # (zero padding), l = 0.05 - 0.9 = -0.85, l + r = -0.25 < 0: the un-resampled l = 0.5 and zero offsets
    torch.testing.assert_close(boxes[0, 0], torch.full_like(boxes[0, 0], 0.5))
    torch.testing.assert_close(offsets[0, 1, :, :-1], torch.full_like(offsets[0, 1, :, :-1], 0.9))
    assert (offsets[0, :, :, -1] == 0).all()
    head.eval()
    y, _ = head(x)
    anchors_x = (torch.arange(x[0].shape[3]) + 0.5) * 8.0
    x1 = xywh2xyxy(y[0, :4, : x[0].shape[2] * x[0].shape[3]].T)[:, 0].view(x[0].shape[2:])
    torch.testing.assert_close(x1[:, :-1], (anchors_x[:-1] + 0.4 * 8.0).expand_as(x1[:, :-1]))  # ax - l * stride
    torch.testing.assert_close(x1[:, -1], (anchors_x[-1] - 0.5 * 8.0).expand_as(x1[:, -1]))


def test_aligned_score_value_and_finite_gradient_when_saturated():
    cls = torch.tensor([-200.0, -40.0, 0.0, 3.0, 40.0, 200.0], requires_grad=True)
    prob = torch.tensor([-200.0, 40.0, 0.0, -3.0, -40.0, 200.0], requires_grad=True)
    score = aligned_score(cls, prob)
    expected = torch.sqrt(torch.sigmoid(cls.double()) * torch.sigmoid(prob.double())).float()
    torch.testing.assert_close(score, expected)
    score.sum().backward()
    assert torch.isfinite(cls.grad).all() and torch.isfinite(prob.grad).all()
    naive_cls = cls.detach().clone().requires_grad_()
    torch.sqrt(torch.sigmoid(naive_cls) * torch.sigmoid(prob.detach())).sum().backward()
    assert not torch.isfinite(naive_cls.grad).all()  # what the custom backward avoids (mmdet PR #7090)
    # analytic gradient d/dcls = 0.5 * score * (1 - sigmoid(cls)) where it is well defined
    torch.testing.assert_close(cls.grad[2:5], (0.5 * score * (1 - torch.sigmoid(cls))).detach()[2:5])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"nc": 0}, "nc"),
        ({"feat_channels": 0}, "feat_channels"),
        ({"stacked_convs": 1.5}, "stacked_convs"),
        ({"ch": ()}, "levels"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    args = {"nc": 3, "feat_channels": 32, "stacked_convs": 2, "reg_max": 16, "end2end": False, "ch": (16, 32)}
    with pytest.raises(ValueError, match=match):
        TOODDetect(**{**args, **kwargs})


def test_end2end_request_keeps_one_to_many_outputs():
    """As stock Detect without a one-to-one branch: ``end2end = True`` (export nms=False) warns and changes nothing."""
    torch.manual_seed(0)
    head = TOODDetect(nc=3, feat_channels=32, stacked_convs=2, ch=(16, 32)).eval()
    head.stride = torch.tensor([8.0, 16.0])
    x = [torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)]
    with torch.no_grad():
        before = head(x)[0]
        head.end2end = True
        after = head(x)[0]
    assert head.end2end is False and torch.equal(before, after) and after.shape == (1, 4 + 3, 8 * 8 + 4 * 4)


def test_sepbn_shares_conv_weights_and_keeps_one_batchnorm_per_level():
    """norm='sepbn' (RTMDet): one conv per stacked layer for all levels, a BatchNorm per level whose statistics are
    that level's own; the GroupNorm head has the same conv parameters and no per-level norm."""
    torch.manual_seed(0)
    gn, sepbn = make_head(feat_channels=16, stacked_convs=2), TOODDetect(3, 16, 2, norm="sepbn", ch=(16, 32, 64))
    sepbn.stride = gn.stride
    convs = [m for m in sepbn.inter_convs.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2  # shared over the 3 levels
    bns = [m for m in sepbn.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 3 * (2 + 2)  # per level: one per stacked conv, one per task decomposition
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in sepbn.modules())
    n_bn = sum(p.numel() for m in bns for p in m.parameters())
    assert sum(p.numel() for p in sepbn.parameters()) == sum(p.numel() for p in gn.parameters()) - 4 * 2 * 16 + n_bn

    # level l's inputs shifted by 10 * l: after a training pass each level's first BatchNorm saw its own mean
    x = [t + 10.0 * level for level, t in enumerate(level_inputs(ch=(16, 32, 64)))]
    with torch.no_grad():
        sepbn.train()(x)
        first = sepbn.inter_convs[0]
        expected = [first.conv(sepbn.adapters[level](t)).mean((0, 2, 3)) for level, t in enumerate(x)]
    for level, mean in enumerate(expected):  # running mean after one step: momentum 0.1 from 0
        torch.testing.assert_close(first.norms[level].running_mean, 0.1 * mean, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(first.norms[0].running_mean, first.norms[2].running_mean)
    y, _ = sepbn.eval()(x)
    assert y.shape == (2, 4 + 3, 64 + 16 + 4) and y.isfinite().all()


def test_bad_norm_is_one_clear_error():
    with pytest.raises(ValueError, match="norm must be one of gn, gn8, sepbn, got 'bn'"):
        TOODDetect(3, 16, 2, norm="bn", ch=(16,))
    with pytest.raises(ValueError, match="norm 'gn8' needs feat_channels divisible by 8, got 12"):
        TOODDetect(3, 12, 2, norm="gn8", ch=(16,))


@pytest.mark.parametrize("channels, gn_groups, gn8_groups", [(64, 32, 8), (256, 32, 32), (16, 16, 2)])
def test_gn8_keeps_the_reference_group_width(channels, gn_groups, gn8_groups):
    """norm='gn8': every GroupNorm (stacked convs and both decompositions) has 8 channels per group, the reference's
    256 / 32; 'gn' keeps the reference's 32 groups (2 channels each at scale n's 64). At 256 channels both are the
    reference. Parameters are the same; each 8-channel group of a gn8 output is normalised on its own."""
    torch.manual_seed(0)
    gn = TOODDetect(3, channels, 2, ch=(16, 32, 64))
    gn8 = TOODDetect(3, channels, 2, norm="gn8", ch=(16, 32, 64))
    groups = lambda head: [m.num_groups for m in head.modules() if isinstance(m, torch.nn.GroupNorm)]  # noqa: E731
    assert groups(gn) == [gn_groups] * 4 and groups(gn8) == [gn8_groups] * 4
    assert sum(p.numel() for p in gn8.parameters()) == sum(p.numel() for p in gn.parameters())
    norm = gn8.inter_convs[0][1]  # affine weight 1, bias 0 at init: the output is the normalised input
    y = norm(torch.randn(2, channels, 5, 5) * torch.arange(1.0, channels + 1).view(1, -1, 1, 1))
    per_group = y.view(2, gn8_groups, -1)
    torch.testing.assert_close(per_group.mean(-1), torch.zeros(2, gn8_groups), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_group.var(-1, unbiased=False), torch.ones(2, gn8_groups), atol=1e-3, rtol=0)


def test_tap_none_has_no_offset_branch_and_decodes_as_stock_detect():
    """tap='none' (the ablation without TAP's re-sampling): no offset convs, zero offsets, boxes around the anchors."""
    torch.manual_seed(0)
    head = TOODDetect(3, 16, 2, tap="none", ch=(16, 32, 64))
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    assert head.reg_offset is None and not any("reg_offset" in n for n, _ in head.named_parameters())
    x = level_inputs(ch=(16, 32, 64))
    out = head.train()(x)
    assert out["offsets"].shape == (2, 8, 64 + 16 + 4) and not out["offsets"].any()
    with torch.no_grad():
        y, preds = head.eval()(x)
        torch.testing.assert_close(y[:, :4], Detect._get_decode_boxes(head, preds), rtol=0, atol=0)
    with pytest.raises(ValueError, match="tap must be one of faithful, none, got 'off'"):
        TOODDetect(3, 16, 2, tap="off", ch=(16,))


def test_conv_adapter_is_stock_detects_first_layer_per_level():
    """adapter='conv': a 3x3 ultralytics Conv (BatchNorm, SiLU) per level, PyTorch's init (its fusion for export:
    test_register.py)."""
    from ultralytics.nn.modules import Conv

    torch.manual_seed(0)
    ch = (16, 32, 64)
    linear = TOODDetect(3, 16, 2, ch=ch)
    head = TOODDetect(3, 16, 2, adapter="conv", ch=ch)
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    assert all(isinstance(a, Conv) and a.conv.kernel_size == (3, 3) for a in head.adapters)
    assert all(isinstance(a.act, torch.nn.SiLU) and a.conv.in_channels == c for a, c in zip(head.adapters, ch))
    # 3x3 weights without bias (BatchNorm's affine instead) replace the 1x1 weights with bias
    extra = sum(c * 16 * 9 + 2 * 16 - (c * 16 + 16) for c in ch)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(head) - count(linear) == extra
    for a, c in zip(head.adapters, ch):  # PyTorch's init (std 1 / sqrt(3 * fan_in)), not the head's std 0.01
        assert a.conv.weight.std().item() == pytest.approx((3 * c * 9) ** -0.5, rel=0.15)
    with pytest.raises(ValueError, match="adapter must be one of linear, conv, got 'deep'"):
        TOODDetect(3, 16, 2, adapter="deep", ch=(16,))


def test_plain_distances_never_invert_a_box_for_any_conv_output():
    """reg_max 1: distances are Scale(exp(x)) as the reference, so for any conv output (here weights of std 3 and
    offsets of several cells) every decoded box has x1 <= x2 and y1 <= y2; the fallback itself is a valid box.

    With raw distances an inverted box such as [3, 3, 1, 1] against a GT [0, 0, 4, 4] has 1 - GIoU = 0.75, the loss of
    the valid [1, 1, 3, 3], so nothing pushed it back (MMDetection PR #7567)."""
    from ultralytics.utils.metrics import bbox_iou

    inverted, valid = torch.tensor([[3.0, 3.0, 1.0, 1.0]]), torch.tensor([[1.0, 1.0, 3.0, 3.0]])
    gt = torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    assert 1 - bbox_iou(inverted, gt, xywh=False, GIoU=True).item() == pytest.approx(0.75)  # why it matters
    assert 1 - bbox_iou(valid, gt, xywh=False, GIoU=True).item() == pytest.approx(0.75)
    for seed in range(3):
        torch.manual_seed(seed)
        head = make_head(reg_max=1)
        with torch.no_grad():
            torch.nn.init.normal_(head.tood_reg.weight, std=3.0)
            torch.nn.init.normal_(head.tood_reg.bias, std=3.0)
            torch.nn.init.normal_(head.reg_offset[-1].weight, std=1.0)
            torch.nn.init.normal_(head.reg_offset[-1].bias, std=3.0)
        x = level_inputs(batch=2)
        with torch.no_grad():
            y, preds = head.eval()(x)
        xyxy = xywh2xyxy(y[:, :4].transpose(1, 2))  # (B, A, 4)
        assert (xyxy[..., 2] >= xyxy[..., 0]).all() and (xyxy[..., 3] >= xyxy[..., 1]).all(), seed
        assert preds["offsets"].abs().sum() > 0  # some locations kept their re-sampled box


def test_offset_convs_start_at_the_reference_std():
    """Both reg_offset convs are initialised normal(std=0.001) as MMDetection's TOOD head (not 0.01 then 0.001)."""
    torch.manual_seed(0)
    head = TOODDetect(nc=80, feat_channels=64, stacked_convs=2, ch=(64, 128, 256))
    first, last = head.reg_offset[0].weight, head.reg_offset[-1].weight
    for w in (first, last):
        assert w.std().item() == pytest.approx(0.001, rel=0.1)
    assert head.tood_reg.weight.std().item() == pytest.approx(0.01, rel=0.1)  # the other convs stay at 0.01


def test_no_stock_branches_as_real_attributes_and_older_pickles_get_them():
    """TOODDetect has no stock branches: cv2 is an empty ModuleList (no state_dict keys) and cv3 None, as plain
    attributes that Detect.forward, end2end and DetectionModel.load read; a head pickled when they were class
    properties (no such attributes) gets the same ones when unpickled, and runs."""
    import pickle

    head = TOODDetect(nc=3, feat_channels=16, stacked_convs=2, ch=(16, 32, 64))
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    assert isinstance(head.cv2, torch.nn.ModuleList) and len(head.cv2) == 0 and head.cv3 is None
    assert not any(k.startswith(("cv2", "cv3")) for k in head.state_dict()) and head.end2end is False
    del head._modules["cv2"], head._modules["cv3"]  # as pickled before
    old = pickle.loads(pickle.dumps(head))
    assert len(old.cv2) == 0 and old.cv3 is None
    x = [torch.randn(1, c, 8 // 2**i, 8 // 2**i) for i, c in enumerate((16, 32, 64))]
    assert old.eval()(x)[0].shape == (1, 7, 84)
