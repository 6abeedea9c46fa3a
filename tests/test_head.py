"""Unit tests of the T-Head: shapes, the TaskDecomposition and re-sampling equivalences, and the score gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import deform_conv2d

from yolo_tood.head import TaskDecomposition, TOODDetect, aligned_score, keep_valid_boxes, resample_by_offsets


def make_head(nc: int = 3, reg_max: int = 16, ch=(16, 32, 64), feat_channels: int = 32, stacked_convs: int = 3):
    head = TOODDetect(nc, feat_channels, stacked_convs, reg_max, ch=ch)
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
    assert out["scores"].shape == (2, 3, anchors)
    assert [f.shape for f in out["feats"]] == [t.shape for t in x]
    for level, t in enumerate(x):
        boxes, scores = head.forward_level(t, level)
        assert boxes.shape == (2, 4 * reg_max, *t.shape[2:]) and scores.shape == (2, 3, *t.shape[2:])
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


def test_keep_valid_boxes_hand_case():
    """Location 0: re-sampled box valid, kept. Location 1: left + right < 0 after re-sampling, original comes back."""
    original = torch.tensor([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]).view(1, 4, 1, 2)
    resampled = torch.tensor([[2.0, -3.0], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]]).view(1, 4, 1, 2)
    out = keep_valid_boxes(resampled, original)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([2.0, 0.5, 0.5, 0.5]))
    torch.testing.assert_close(out[0, :, 0, 1], torch.tensor([1.0, 1.0, 1.0, 1.0]))


def test_plain_distance_head_applies_the_fallback():
    """With reg_max 1, an offset that moves the left side onto a far-left-reaching prediction is undone."""
    head = make_head(reg_max=1).train()
    x = level_inputs(batch=1)
    with torch.no_grad():
        for conv in (head.tood_reg, head.reg_offset[-1]):
            conv.weight.zero_()
            conv.bias.zero_()
        head.tood_reg.bias.copy_(torch.tensor([-0.5, 1.0, 1.0, 1.0]))  # valid un-resampled: left + right = 0.5
        head.reg_offset[-1].bias[1] = 0.5  # side 0 samples half a pixel right: zero padding at the last column
    boxes, _ = head.forward_level(x[0], 0)
    # interior: left stays -0.5 (constant field), valid; last column: 0.5 * -0.5 = -0.25, still valid
    torch.testing.assert_close(boxes[0, 0, :, :-1], torch.full_like(boxes[0, 0, :, :-1], -0.5))
    torch.testing.assert_close(boxes[0, 0, :, -1], torch.full_like(boxes[0, 0, :, -1], -0.25))
    with torch.no_grad():
        head.tood_reg.bias.copy_(torch.tensor([1.0, 1.0, -0.4, 1.0]))  # left + right = 0.6: valid un-resampled
        head.reg_offset[-1].bias[1] = 0.9  # last column: left = 0.1 * 1.0 after zero padding, 0.1 - 0.4 < 0
    boxes, _ = head.forward_level(x[0], 0)
    torch.testing.assert_close(boxes[0, 0], torch.ones_like(boxes[0, 0]))  # interior re-sampled 1.0, border fell back
    torch.testing.assert_close(boxes[0, 2], torch.full_like(boxes[0, 2], -0.4))


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
        ({"end2end": True}, "end2end"),
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
