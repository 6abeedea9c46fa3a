"""TOOD's task-aligned head (T-Head) with its task-aligned predictor (TAP), as an ultralytics ``Detect`` subclass.

Follows the TOOD paper (Feng et al., ICCV 2021, section 3.1) and MMDetection's ``tood_head.py``; the names
(``inter_convs``, ``TaskDecomposition``, ``cls_prob``, ``reg_offset``) are the reference's. Deviations, each for
YOLOv8's neck or for export, are marked "Deviation" where they happen.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from ultralytics.nn.modules import DFL, Conv, Detect
from ultralytics.utils.tal import make_anchors

from ..checks import check_int

__all__ = (
    "ADAPTERS",
    "BRANCH_PREFIXES",
    "DFLExpectation",
    "DGQP",
    "HEAD_NORMS",
    "MergedPredictors",
    "TAP_MODES",
    "Scale",
    "SepBNConv",
    "TaskDecomposition",
    "TOODDetect",
    "aligned_score",
    "check_quality",
    "inference_score",
    "keep_topk_scores",
    "keep_topk_scores_per_level",
    "NMS_PRE_MODES",
    "QUALITY_MODES",
    "keep_valid_boxes",
    "offset_distances",
    "resample_by_offsets",
    "side_shifts",
    "task_aligned_outputs",
    "TaskAlignedOutputs",
)

PRIOR_PROB = 0.01  # cls and probability-map bias prior, as MMDetection's TOOD head

# A head's branches by attribute prefix: one-to-many ("") and, on end-to-end models, one-to-one (Detect's "one2one_"
# prefix, which Detect.fuse reads to drop the branch inference does not use)
BRANCH_PREFIXES = ("", "one2one_")

# The T-Head's modules, by attribute name; an end-to-end head (YOLO26) holds a copy of each under Detect's "one2one_"
# prefix (its one-to-one branch, fed detached features as ultralytics builds it), which Detect.fuse reads to drop the
# branch inference does not use
T_HEAD_MODULES = (
    "adapters",
    "inter_convs",
    "cls_decomp",
    "reg_decomp",
    "tood_cls",
    "tood_reg",
    "cls_prob",
    "dgqp",
    "reg_offset",
    "scales",
)
# Offset channels along each side's own axis in the (dy, dx) x (left, top, right, bottom) layout: dx_l, dy_t, dx_r, dy_b
SIDE_SHIFT_CHANNELS = (1, 2, 5, 6)
# Candidates per image kept before NMS at inference, over all levels (MMDetection's TOOD: nms_pre=1000 per level, here
# the opt-in nms_pre_mode="level"). See keep_topk_scores.
NMS_PRE = 1000
# Plain distances (reg_max 1) are exp(x) in stride units as the reference; x is clamped here (see forward_level)
MAX_LOG_DISTANCE = math.log(1e4)
OFFSET_INIT_STD = 0.001  # both reg_offset convs, as MMDetection's TOOD head (normal_init(std=0.001)), so samples start
# at the anchor


def one_kernel_forms(x: torch.Tensor) -> bool:
    """Whether to compute on ``x`` with the forms that launch fewest kernels (one ``topk`` over all pairs or bins)
    rather than the forms that run faster on a CPU and in onnxruntime (two small TopKs; a sorting network of
    elementwise ops, ``top4_values``): True on every device but the CPU, and never when exporting. Both forms give the
    same values (tests/test_quality.py, tests/test_nms_pre.py)."""
    return x.device.type != "cpu" and not torch.onnx.is_in_onnx_export()


def keep_topk_scores(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Zero every score of an image except its ``k`` largest (anchor, class) scores: a pre-NMS candidate bound.

    TOOD's aligned score and QFL leave many more (anchor, class) pairs above ultralytics' validation threshold than
    stock YOLOv8, and NMS time grows with their number (ultralytics' NMS time limit then drops detections).
    MMDetection bounds this with ``nms_pre=1000`` candidates per level before NMS. Deviation: the default bound is over
    all levels and classes of an image (same mAP as the per-level form, ``keep_topk_scores_per_level``, at a fraction
    of its NMS time: docs/export.md), inside the head's inference output so that exported graphs carry it too (TopK +
    GatherElements + Mul). The shape is kept (same output contract): the other scores become 0, below every
    threshold.

    On a GPU the k-th largest pair is found by one TopK over all nc * A pairs (``one_kernel_forms``). On the CPU and
    in exports it is found in two small TopKs, which run faster there: a pair among the top k has fewer than k pairs
    above it, so fewer than k anchors have a higher best-class score, and its anchor is among the k anchors with the
    highest best-class score. In an export the anchor scores are padded with k zeros before the first TopK (padding
    anchors then contribute pairs of score 0), so a graph traced at a small input size (fewer than k anchors) stays
    valid at any size.

    Args:
        scores (torch.Tensor): (B, nc, A) scores in [0, 1].
        k (int): Candidates kept per image.

    Returns:
        (torch.Tensor): (B, nc, A) scores, all but the top ``k`` of each image set to 0 (ties with the k-th are kept).

    Examples:
        >>> s = torch.tensor([[[0.9, 0.1, 0.5], [0.2, 0.7, 0.3]]])
        >>> keep_topk_scores(s, 2)
        tensor([[[0.9000, 0.0000, 0.0000],
                 [0.0000, 0.7000, 0.0000]]])
    """
    b, nc, a = scores.shape
    exporting = torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()
    if one_kernel_forms(scores) and nc * a >= k:  # one TopK over all pairs: the same k-th value in fewer launches
        kth = scores.reshape(b, nc * a).topk(k, dim=1).values[:, -1:, None]
    elif not exporting and a >= k:  # eager, enough anchors: no padding needed (the values are the same)
        anchors = scores.amax(1).topk(k, dim=1).indices  # (B, k) anchors of the k best best-class scores
        kth = scores.gather(2, anchors[:, None].expand(b, nc, k)).reshape(b, nc * k).topk(k, dim=1).values[:, -1:, None]
    else:
        best = scores.amax(1)  # (B, A) best-class score of each anchor
        anchors = torch.cat((best, best.new_zeros(b, k)), 1).topk(k, dim=1).indices  # (B, k), >= A for padding
        real = anchors < a
        anchors = torch.where(real, anchors, torch.zeros_like(anchors))
        pairs = scores.gather(2, anchors[:, None].expand(b, nc, k)) * real[:, None]  # (B, nc, k), padding scores 0
        kth = pairs.reshape(b, nc * k).topk(k, dim=1).values[:, -1:, None]  # (B, 1, 1) the k-th largest pair score
    keep = scores >= kth
    if torch.onnx.is_in_onnx_export():  # onnxruntime's CPU Where is slower than a Mul by the mask (BENCHMARKS.md 26)
        return scores * keep.to(scores.dtype)
    return torch.where(keep, scores, 0.0)  # in PyTorch the faster one; a scalar 0: no zeros tensor to allocate


def keep_topk_scores_per_level(scores: torch.Tensor, k: int, level_sizes: list[int]) -> torch.Tensor:
    """``keep_topk_scores`` applied to each pyramid level on its own: MMDetection's ``nms_pre`` (k per level).

    Args:
        scores (torch.Tensor): (B, nc, A) scores in [0, 1], the levels' anchors one after another.
        k (int): Candidates kept per level and image.
        level_sizes (list[int]): Anchors of each level (H_l * W_l), summing to A.

    Returns:
        (torch.Tensor): (B, nc, A) scores, all but the top ``k`` of each level and image set to 0.

    Examples:
        >>> s = torch.tensor([[[0.9, 0.8, 0.1, 0.2]]])
        >>> keep_topk_scores_per_level(s, 1, [2, 2])
        tensor([[[0.9000, 0.0000, 0.0000, 0.2000]]])
    """
    return torch.cat([keep_topk_scores(level, k) for level in scores.split(level_sizes, 2)], 2)


# Where the pre-NMS bound applies: "image" keeps nms_pre (anchor, class) pairs per image over all levels, "level"
# nms_pre per level as MMDetection's nms_pre (3 levels: 3 * nms_pre per image)
NMS_PRE_MODES = ("image", "level")


# Normalisation of the shared head convs: "gn" one GroupNorm shared over levels (MMDetection's TOOD head: 32 groups),
# "gn8" the same with the reference's group WIDTH instead of its count (8 channels per group, as 256 / 32; at scale n's
# 64 channels "gn" has 32 groups of 2), "sepbn" one BatchNorm per level behind the shared conv weights (RTMDet's
# SepBN; the stacked convs' fold into them at export)
HEAD_NORMS = ("gn", "gn8", "sepbn")
GN_GROUP_WIDTH = 8  # channels per group of norm="gn8": the reference's 256 channels / 32 groups
# TAP's box re-sampling: "faithful" the reference's (side k from the edge location a + O_k predicts), "none" no
# re-sampling at all (no offset branch; boxes decoded around each anchor as stock Detect), for ablations
TAP_MODES = ("faithful", "none")
# What the probability map M reads: features (TOOD's cls_prob on the task-interactive feature), distribution (GFLv2's
# DGQP on the final, re-sampled box distribution) or both (the sum of the two logits)
QUALITY_MODES = ("features", "distribution", "both")
# GFLv2's DGQP settings, as implus/GFocalV2 configs/gfocal/gfocal_r50_fpn_1x.py: reg_topk 4, reg_channels 64, add_mean
DGQP_TOPK = 4
DGQP_CHANNELS = 64
# The per-level layer that maps each neck level to the shared width: "linear" a 1x1 conv (the smallest map for YOLOv8's
# unequal neck widths), "conv" ultralytics' Conv (3x3 conv, BatchNorm, SiLU), the layer each branch of stock Detect
# starts with; per-level capacity where it is cheap (P4/P5 maps are 4x/16x smaller than P3), for ablations
ADAPTERS = ("linear", "conv")


def check_quality(quality: str, reg_max: int, head: str) -> None:
    """Raise a one-line ``ValueError`` when ``quality`` is not a ``QUALITY_MODES`` value or needs a distribution that
    a ``reg_max`` head does not have."""
    if quality not in QUALITY_MODES:
        raise ValueError(f"{head}: quality must be one of {', '.join(QUALITY_MODES)}, got {quality!r}")
    if quality != "features" and reg_max <= DGQP_TOPK:
        raise ValueError(
            f"{head}: quality {quality!r} reads the DFL box distribution, which a reg_max {reg_max} head does not "
            "have; use quality 'features'"
        )


def _group_norm(channels: int, group_width: int = 0) -> nn.GroupNorm:
    """GroupNorm with 32 groups as the reference (or the largest divisor of ``channels`` below 32 for narrow heads).

    With ``group_width`` the groups have that many channels instead (``channels`` must be a multiple of it; TOODDetect
    checks its ``feat_channels``).
    """
    groups = channels // group_width if group_width else math.gcd(32, channels)
    return nn.GroupNorm(groups, channels)


def _level_norms(channels: int, levels: int) -> nn.ModuleList:
    """One BatchNorm per pyramid level (SepBN), for a layer whose weights are shared over the levels."""
    return nn.ModuleList(nn.BatchNorm2d(channels) for _ in range(levels))


class SepBNConv(nn.Module):
    """A 3x3 conv shared over the pyramid levels with one BatchNorm per level, then ReLU: RTMDet's "SepBN".

    The statistics of P3, P4 and P5 differ, so one BatchNorm over all levels mixes them; RTMDet shares the conv
    weights and keeps a BatchNorm per level (RTMDet-l head ablation: shared conv + one BN 48.0 AP, separate heads
    51.2, SepBN 51.3). In eval mode each level's BatchNorm is an affine map that ONNX export folds into the conv.

    Args:
        channels (int): Input and output channels.
        levels (int): Number of pyramid levels, one BatchNorm each.

    Examples:
        >>> conv = SepBNConv(16, 3)
        >>> conv(torch.randn(2, 16, 8, 8), level=2).shape
        torch.Size([2, 16, 8, 8])
    """

    def __init__(self, channels: int, levels: int):
        """Initialize the shared conv and the per-level BatchNorms."""
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norms = _level_norms(channels, levels)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Return ReLU(BN_level(conv(x))) for a feature ``x`` (B, C, H, W) of pyramid level ``level``."""
        return self.act(self.norms[level](self.conv(x)))


def aligned_score(cls_logits: torch.Tensor, prob_logits: torch.Tensor) -> torch.Tensor:
    """Return TAP's aligned score sqrt(sigmoid(cls) * sigmoid(M)) with a gradient that stays finite when saturated.

    Computed as exp(0.5 * (logsigmoid(cls) + logsigmoid(M))): the value is the same, and autograd then gives
    d/dcls = 0.5 * score * (1 - sigmoid(cls)), the analytic backward MMDetection writes by hand (its
    ``sigmoid_geometric_mean``, PR #7090), where a plain ``sqrt(a * b)`` gives inf/NaN gradients once the product
    underflows.

    Args:
        cls_logits (torch.Tensor): Classification logits, any shape broadcastable with ``prob_logits``.
        prob_logits (torch.Tensor): Probability-map logits M, e.g. (B, 1, H, W).

    Returns:
        (torch.Tensor): Aligned scores in [0, 1] with the broadcast shape, float32 whatever the dtype of the logits.

    Examples:
        >>> s = aligned_score(torch.tensor([100.0, -100.0]), torch.tensor([0.0, 0.0]))
        >>> s.isfinite().all()
        tensor(True)
    """
    # In float32 whatever the autocast dtype: in fp16 the log-sigmoid sum of a score above 0.99999 is a subnormal of
    # a few significant bits, and the loss gradient into it (about 1 / (1 - score)) overflows fp16 under loss scaling.
    return torch.exp(0.5 * (F.logsigmoid(_fp32(cls_logits)) + F.logsigmoid(_fp32(prob_logits))))


def _fp32(x: torch.Tensor) -> torch.Tensor:
    """Return ``x`` as float32 when it is of a lower precision (fp16, bf16); float32 and float64 are kept."""
    return _cast(x, torch.promote_types(x.dtype, torch.float32))


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Return ``x`` in ``dtype``; ``x`` itself when it already is (an ONNX export then gets no Cast node)."""
    return x if x.dtype == dtype else x.to(dtype)


def inference_score(cls_logits: torch.Tensor, prob_logits: torch.Tensor) -> torch.Tensor:
    """Return the aligned score sqrt(sigmoid(cls) * sigmoid(M)) for inference, computed in float32.

    The product of two probabilities near 1e-3 is near 1e-6, a subnormal of a few bits in fp16 (1.7% relative error
    in the score for scores 1e-3 - 1e-2), so it is formed in float32 and only the score is cast back to the dtype of
    the logits (fp16 for ``half=True`` validation and export).

    Args:
        cls_logits (torch.Tensor): Classification logits, e.g. (B, nc, H, W).
        prob_logits (torch.Tensor): Probability-map logits M, e.g. (B, 1, H, W).

    Returns:
        (torch.Tensor): Scores in [0, 1] with the broadcast shape, in the dtype of ``cls_logits``.
    """
    return _cast((_fp32(cls_logits).sigmoid() * _fp32(prob_logits).sigmoid()).sqrt(), cls_logits.dtype)


def sampling_grid(
    sizes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``F.grid_sample``'s normalised (y, x) of every level's pixel centres, and of one pixel of offset.

    With ``align_corners=False`` pixel j of a width-W map is at (2j + 1) / W - 1, so a sample at j + dx is at
    base + scale * dx with scale 2 / W; the levels are laid out one after another, as the flattened anchors. The
    order is (y, x), as mmcv's offsets (dy, dx): ``resample_levels`` samples the transposed maps.

    Args:
        sizes (list[tuple[int, int]]): (H, W) of each level.
        device (torch.device): Device of the result.
        dtype (torch.dtype): Floating dtype of the result.

    Returns:
        base (torch.Tensor): (1, 1, 2, A) normalised (y, x) of each anchor's pixel centre.
        scale (torch.Tensor): (1, 1, 2, A) normalised size of one pixel along y and x at each anchor.
    """
    bases, scales = [], []
    for h, w in sizes:
        xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
        ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
        bases.append(torch.stack((ys[:, None].expand(h, w), xs.expand(h, w))).view(2, h * w))
        # from the sizes, not a literal: traced exports stay dynamic
        ones = torch.ones(h, w, device=device, dtype=dtype)
        scales.append(torch.stack((ones * 2 / h, ones * 2 / w)).view(2, h * w))
    return torch.cat(bases, 1)[None, None], torch.cat(scales, 1)[None, None]


def resample_levels(
    preds: list[torch.Tensor] | tuple[torch.Tensor, ...], offsets: torch.Tensor, grid: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Bilinearly re-sample each box side's channels of every level at (location + that side's offset).

    This is TAP's spatial re-sampling of the box prediction: MMDetection applies a 1x1 deformable convolution with a
    unit kernel per box side, which equals bilinear interpolation with zero padding. (The re-sampled side is then
    measured from the sample point, see ``faithful_distances``.) ``F.grid_sample`` computes the same thing with
    standard ops, so the head exports to ONNX (GridSample, opset >= 16) and needs no mmcv. The sampling grid of all
    levels is made in one op from the flattened offsets; one ``grid_sample`` call per level re-samples its four sides
    (folded into the batch dimension).

    Args:
        preds (list[torch.Tensor]): Each level's prediction (B, 4 * C, H_l, W_l); channel group k holds side k.
        offsets (torch.Tensor): Offsets (B, 8, A) in feature-map pixels, the levels one after another, laid out
            (dy, dx) per side as mmcv's deformable convolution expects.
        grid (tuple[torch.Tensor, torch.Tensor]): ``sampling_grid`` of the levels, in the dtype the sampling runs in.

    Returns:
        (torch.Tensor): Re-sampled predictions (B, 4 * C, A) in the dtype of ``preds``.
    """
    base, scale = grid
    b, a = offsets.shape[0], offsets.shape[2]
    points = torch.addcmul(base, _cast(offsets, base.dtype).view(b, 4, 2, a), scale)  # (B, 4, 2, A) every level's
    out, start = [], 0
    for pred in preds:
        _, c, h, w = pred.shape
        level = points[..., start : start + h * w].transpose(2, 3).reshape(b * 4, h, w, 2)  # a view, (y, x) last
        # grid_sample reads (x, y) of its input: the transposed map's (x, y) is the map's (y, x), mmcv's order
        src = _cast(pred, base.dtype).reshape(b * 4, c // 4, h, w).transpose(2, 3)
        out.append(F.grid_sample(src, level, "bilinear", "zeros", align_corners=False).view(b, c, h * w))
        start += h * w
    # The grid and the sampling are float32 whatever the dtype of pred (fp16/bf16 under autocast or half=True): a
    # normalised coordinate near 1 has a step of 2**-8 in bf16, i.e. 0.3-0.5 px on an 80-wide map (0.06 px in fp16).
    # Only the result is cast back.
    return _cast(_cat(out, 2), preds[0].dtype)


def resample_by_offsets(pred: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """``resample_levels`` of one level: re-sample each side's channels of ``pred`` at (location + its offset).

    Args:
        pred (torch.Tensor): Predictions (B, 4 * C, H, W); channel group k holds the channels of box side k.
        offsets (torch.Tensor): Offsets in feature-map pixels (B, 8, H, W), laid out (dy, dx) per side.

    Returns:
        (torch.Tensor): Re-sampled predictions with the shape of ``pred``.

    Examples:
        >>> x = torch.randn(1, 8, 5, 6)
        >>> torch.allclose(resample_by_offsets(x, torch.zeros(1, 8, 5, 6)), x, atol=1e-6)
        True
    """
    grid = sampling_grid([pred.shape[2:]], pred.device, torch.promote_types(pred.dtype, torch.float32))
    return resample_levels([pred], offsets.flatten(2), grid).view(pred.shape)


def _cat(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...], dim: int) -> torch.Tensor:
    """``torch.cat``, without the copy when there is one tensor."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim)


def side_shifts(offsets: torch.Tensor) -> torch.Tensor:
    """Return how far each box side's measuring point moves along that side's axis: (dx_l, dy_t, dx_r, dy_b).

    TAP measures side k of the box at location a from the point a + O_k (MMDetection decodes the boxes first and
    re-samples the edges, so side k IS the edge that location a + O_k predicted). Only the offset component along the
    side's axis moves the edge, so in xyxy the faithful box is the box decoded around the anchor from the re-sampled
    distances, plus these shifts.

    Args:
        offsets (torch.Tensor): Offsets (B, 8, ...) in feature-map pixels, (dy, dx) per side (left, top, right,
            bottom), mmcv's layout.

    Returns:
        (torch.Tensor): (B, 4, ...) shifts of (x1, y1, x2, y2) in feature-map pixels.

    Examples:
        >>> side_shifts(torch.arange(8.0).view(1, 8)).tolist()
        [[1.0, 2.0, 5.0, 6.0]]
    """
    return offsets[:, list(SIDE_SHIFT_CHANNELS)]


def offset_distances(offsets: torch.Tensor) -> torch.Tensor:
    """Return the offset term of TAP's distances, (-dx_l, -dy_t, dx_r, dy_b), in feature-map pixels (B, 4, ...).

    With re-sampled distances d(a + O_k) (each side at its own offset), the distances of the faithful box from the
    anchor a are d(a + O_k) + this term: l_a = l(a+O_l) - dx_l, t_a = t(a+O_t) - dy_t, r_a = r(a+O_r) + dx_r,
    b_a = b(a+O_b) + dy_b.
    """
    return side_shifts(offsets) * offsets.new_tensor([-1.0, -1.0, 1.0, 1.0]).view(1, 4, *([1] * (offsets.dim() - 2)))


def faithful_distances(distances: torch.Tensor, offsets: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Return the distances of TAP's faithful box from the anchor: ``distances + offset_distances(offsets)``.

    Args:
        distances (torch.Tensor): (B, 4, A) re-sampled distances d(a + O_k), (left, top, right, bottom).
        offsets (torch.Tensor): (B, 8, A) offsets, (dy, dx) per side.
        signs (torch.Tensor): (2, 1, 1) the signs (-1, 1) of the (left, top) and (right, bottom) shifts.

    Returns:
        (torch.Tensor): (B, 2, 2, A) distances ((left, top), (right, bottom)) from the anchor.
    """
    b, _, a = offsets.shape
    # channels 4p + 1, 4p + 2 (p = 0: dx_l, dy_t; p = 1: dx_r, dy_b) are the along-axis shifts, as side_shifts: a view
    shifts = offsets.view(b, 2, 4, a)[:, :, 1:3]
    return torch.addcmul(distances.view(b, 2, 2, a), shifts, signs)


def valid_boxes(distances: torch.Tensor) -> torch.Tensor:
    """Return where a box is valid (x1 <= x2 and y1 <= y2): left + right >= 0 and top + bottom >= 0.

    Args:
        distances (torch.Tensor): (B, 2, 2, A) distances ((left, top), (right, bottom)), ``faithful_distances``.

    Returns:
        (torch.Tensor): (B, 1, A) bool.
    """
    return distances.sum(1).amin(1, keepdim=True) >= 0  # NaN distances compare False: invalid


def keep_valid_boxes(
    distances: torch.Tensor, resampled: torch.Tensor, offsets: torch.Tensor, original: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return TAP's box prediction and offsets, except where the faithful box is invalid: there un-resampled ones.

    As MMDetection's TOOD head (PR #7567), which keeps the un-resampled box where re-sampling made it invalid
    (x1 > x2 or y1 > y2), because such boxes gave a negative GIoU loss. In distance form (left, top, right, bottom)
    a box is invalid when left + right < 0 or top + bottom < 0. With the offset term a DFL side can be negative, so
    this applies to DFL heads too. The fallback is the prediction with zero offsets: the box decoded around the
    anchor, whose DFL targets are then measured from the anchor itself.

    Args:
        distances (torch.Tensor): Faithful distances (B, 4, ...) of the re-sampled prediction, offset term included.
        resampled (torch.Tensor): Re-sampled box prediction (B, 4 * reg_max, ...).
        offsets (torch.Tensor): Its offsets (B, 8, ...).
        original (torch.Tensor): Un-resampled box prediction (B, 4 * reg_max, ...).

    Returns:
        boxes (torch.Tensor): (B, 4 * reg_max, ...), all sides from ``resampled`` or from ``original`` per location.
        offsets (torch.Tensor): (B, 8, ...), zero where the original prediction was taken.
    """
    valid = (distances[:, 0:1] + distances[:, 2:3] >= 0) & (distances[:, 1:2] + distances[:, 3:4] >= 0)
    return torch.where(valid, resampled, original), torch.where(valid, offsets, 0.0)


class AlignedOutputs(NamedTuple):
    """TAP's outputs over the flattened levels (``task_aligned_outputs``).

    Attributes:
        boxes (torch.Tensor): (B, 4 * reg_max, A) box prediction, side k re-sampled at location + O_k.
        offsets (torch.Tensor): (B, 8, A), zero where the un-resampled prediction was kept (all zero without TAP).
        scores (torch.Tensor): (B, nc, A) aligned scores in [0, 1].
        distances (torch.Tensor | None): (B, 4, A) the faithful box's distances from the anchor (stride units), which
            inference decodes; None in training.
    """

    boxes: torch.Tensor
    offsets: torch.Tensor
    scores: torch.Tensor
    distances: torch.Tensor | None


class LevelMaps(NamedTuple):
    """A task-aligned head's raw maps of one level, before TAP (``level_maps``).

    Attributes:
        reg (torch.Tensor): Box prediction (B, 4 * reg_max, H, W): DFL logits, or distances when reg_max is 1.
        cls_logits (torch.Tensor): Classification logits (B, nc, H, W).
        prob_logits (torch.Tensor | None): Probability-map logits M from the features (B, 1, H, W); None when M reads
            the box distribution only.
        offsets (torch.Tensor | None): Offsets (B, 8, H, W), (dy, dx) per side; None without re-sampling.
    """

    reg: torch.Tensor
    cls_logits: torch.Tensor
    prob_logits: torch.Tensor | None
    offsets: torch.Tensor | None


def task_aligned_outputs(
    maps: list[LevelMaps],
    dfl: nn.Module,
    training: bool,
    dgqp: nn.Module | None,
    constants: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> AlignedOutputs:
    """Return TAP's outputs over all levels at once: the aligned score and the re-sampled box prediction.

    The step every task-aligned head shares once it has, per level, its cls logits, probability map M, box prediction
    and offsets (``TOODDetect`` from its T-Head tower, ``TAPDetect`` from the stock branches; paper section 3.1):
    score sqrt(sigmoid(cls) * sigmoid(M)), each box side re-sampled at location + O_k, and the un-resampled prediction
    kept where the faithful box is invalid (as MMDetection, PR #7567). Every step but the re-sampling runs once on the
    levels flattened into (B, C, A), as they differ only in size.

    Args:
        maps (list[LevelMaps]): Each level's raw maps.
        dfl (nn.Module): The head's distance decoder (``DFLExpectation`` or ``nn.Identity``).
        training (bool): True for the finite-gradient score (float32, for the loss) and the training dict; at
            inference the plain score form (the same value in fewer ops) and the faithful distances.
        dgqp (nn.Module | None): ``DGQP`` reading the final (re-sampled) box distribution; its logit is added to the
            features' M (``quality="both"``) or is M (``"distribution"``). None for ``quality="features"``.
        constants (tuple[torch.Tensor, torch.Tensor, torch.Tensor]): The levels' ``sampling_grid`` (base, scale) and
            the (2, 1, 1) signs (-1, 1) of ``faithful_distances``, in the sampling dtype.

    Returns:
        (AlignedOutputs): boxes, offsets, scores (B, C, A) and, at inference, the faithful distances.
    """
    reg_maps, cls_maps, prob_maps, offset_maps = zip(*maps)
    b = reg_maps[0].shape[0]
    reg = _cat([m.view(b, m.shape[1], -1) for m in reg_maps], 2)  # (B, 4 * reg_max, A)
    cls_logits = _cat([m.view(b, m.shape[1], -1) for m in cls_maps], 2)
    prob_logits = None if prob_maps[0] is None else _cat([m.view(b, 1, -1) for m in prob_maps], 2)
    distances = None
    if offset_maps[0] is None:  # no re-sampling, every side measured from the anchor
        boxes, offsets = reg, reg.new_zeros(b, 8, reg.shape[2])
        distances = None if training else dfl(reg)
    else:
        offsets = _cat([m.view(b, 8, -1) for m in offset_maps], 2)  # (B, 8, A)
        resampled = resample_levels(reg_maps, offsets, constants[:2])
        # the validity test needs the distances only as values: detached, so it adds nothing to the backward pass
        faithful = faithful_distances(dfl(resampled.detach()), offsets.detach(), constants[2])  # (B, 2, 2, A)
        valid = valid_boxes(faithful)  # (B, 1, A)
        boxes, offsets = torch.where(valid, resampled, reg), torch.where(valid, offsets, 0.0)
        if not training:  # DFL is per anchor: the fallback's distances are those of the un-resampled prediction
            distances = _cast(torch.where(valid, faithful.view(b, 4, -1), dfl(reg)), reg.dtype)
    if dgqp is not None:  # M from the distribution of the box that is decoded (after re-sampling and the fallback)
        quality = dgqp(boxes)
        prob_logits = quality if prob_logits is None else prob_logits + quality
    scores = aligned_score(cls_logits, prob_logits) if training else inference_score(cls_logits, prob_logits)
    return AlignedOutputs(boxes, offsets, scores, distances)


class TaskAlignedOutputs:
    """Inference of a task-aligned head: boxes decoded with TAP's offsets, scores already probabilities, nms_pre.

    A mixin for ``Detect`` subclasses whose training dict is ``{"boxes", "offsets", "scores", "feats"}`` with
    "scores" the aligned scores (probabilities, not logits): ``TOODDetect`` and ``TAPDetect``. It holds behaviour
    only (no ``nn.Module`` state), so a head that keeps stock ``cv2`` / ``cv3`` children is not shadowed by it; its
    two properties are ``Detect``'s branch dicts, read from the head's ``_branch(prefix)``. The class attributes are
    the ones TOODLoss and yolo-tood's callbacks read.
    """

    epoch: int | None = None  # trainer's current 0-based epoch, set by yolo_tood's callbacks; None outside training
    nms_pre: int = NMS_PRE  # inference candidates before NMS (keep_topk_scores); 0 keeps all
    nms_pre_mode: str = "image"  # NMS_PRE_MODES: nms_pre per image or per level
    atss_epochs: int | None = None  # warm-up length resolved from the trainer's epochs by the callbacks

    @property
    def one2many(self) -> dict[str, nn.Module | None]:
        """The one-to-many branch's modules, which ``Detect.forward`` passes to ``forward_head``."""
        return self._branch("")

    @property
    def one2one(self) -> dict[str, nn.Module | None]:
        """The one-to-one branch's modules (``Detect``'s ``one2one_`` prefix); all None on a head without one."""
        return self._branch("one2one_")

    def branch_prefixes(self) -> list[str]:
        """The prefixes of the branches this head still has: one-to-many (``""``), and ``one2one_`` on an end-to-end
        head (YOLO26) until ``Detect.fuse`` drops one of them (its ``cv2`` is then None)."""
        return [prefix for prefix in BRANCH_PREFIXES if self._branch(prefix)["box_head"] is not None]

    def score_convs(self) -> list[nn.Conv2d]:
        """The convs whose outputs are score logits: the class logits' and M's last convs (from the features and from
        the distribution, where present), of every branch the head still has (one-to-one too on an end-to-end head)."""
        return [conv for prefix in self.branch_prefixes() for conv in self._score_logit_convs(self._branch(prefix))]

    def forward_head(self, x: list[torch.Tensor], **branch: nn.Module | None) -> dict[str, torch.Tensor | list]:
        """Return the training dict of ultralytics' Detect contract, plus TAP's offsets, from ``level_maps``.

        ``Detect.forward`` passes one branch's modules as keywords (``self.one2many``, then ``self.one2one`` for an
        end-to-end head); they go to ``level_maps``, and TAP runs once over the flattened levels
        (``task_aligned_outputs``). A branch whose ``box_head`` ``Detect.fuse`` removed gives ``{}``, as
        ``Detect.forward_head``.

        Returns:
            (dict): ``boxes`` (B, 4 * reg_max, A) re-sampled box prediction, ``offsets`` (B, 8, A) the offsets it was
                re-sampled with ((dy, dx) per side, feature-map pixels), ``scores`` (B, nc, A) aligned scores
                (probabilities, not logits), ``feats`` the input levels; at inference also ``distances`` (B, 4, A),
                the faithful box's distances from each anchor, which ``_get_decode_boxes`` decodes.
        """
        if "box_head" in branch and branch["box_head"] is None:
            return {}
        b = branch or self.one2many
        out = self._aligned_outputs(self.all_level_maps(x, b), b)
        preds = {"boxes": out.boxes, "offsets": out.offsets, "scores": out.scores, "feats": x}
        return preds if out.distances is None else {**preds, "distances": out.distances}

    def all_level_maps(self, x: list[torch.Tensor], branch: dict[str, nn.Module | None]) -> list[LevelMaps]:
        """The raw maps of every level: ``level_maps`` level by level (a head may batch what the levels share)."""
        return [self.level_maps(xi, i, **branch) for i, xi in enumerate(x)]

    def forward_level(
        self, x: torch.Tensor, level: int, **branch: nn.Module | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run the head and TAP on one level alone: (boxes (B, 4 * reg_max, H, W), offsets (B, 8, H, W), scores
        (B, nc, H, W)), as ``forward_head``'s outputs of that level (for tests and tools; ``branch`` as there)."""
        b = branch or self.one2many
        out = self._aligned_outputs([self.level_maps(x, level, **b)], b)
        return tuple(t.view(*t.shape[:2], *x.shape[2:]) for t in (out.boxes, out.offsets, out.scores))

    def _aligned_outputs(self, maps: list[LevelMaps], branch: dict[str, nn.Module | None]) -> AlignedOutputs:
        """``task_aligned_outputs`` of one branch's level maps, with this head's decoder, DGQP and constants."""
        reg = maps[0].reg
        constants = self._tap_constants([m.reg.shape[2:] for m in maps], reg.device, _fp32(reg).dtype)
        return task_aligned_outputs(maps, self.dfl, self.training, branch.get(self.dgqp_key), constants)

    def _tap_constants(
        self, sizes: list[tuple[int, int]], device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The levels' sampling grid and the signs of ``faithful_distances``, cached per (sizes, device, dtype) as
        ``Detect`` caches its anchors; made in the graph when exporting or tracing (``dynamic`` input sizes)."""
        key = (tuple(tuple(int(v) for v in s) for s in sizes), device, dtype)
        tracing = torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or self.dynamic
        cached = self.__dict__.get("_tap_cache")
        if tracing or cached is None or cached[0] != key:
            signs = torch.tensor([-1.0, 1.0], device=device, dtype=dtype).view(2, 1, 1)
            cached = (key, *sampling_grid(sizes, device, dtype), signs)
            if not tracing:
                self.__dict__["_tap_cache"] = cached
        return cached[1:]

    def __getstate__(self) -> dict:
        """Pickle without the cached constants (``_tap_constants``), as tensors that a checkpoint does not need."""
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        return {k: v for k, v in state.items() if k != "_tap_cache"}

    def _get_decode_boxes(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decode TAP's faithful distances (``x["distances"]``, side k measured from anchor + O_k) as ``Detect``
        decodes its DFL distances: ``decode_bboxes(distances, anchors) * strides``, anchors cached as there."""
        shape = x["feats"][0].shape
        if self.dynamic or self.shape != shape:  # Detect._get_decode_boxes's cache of ultralytics' make_anchors
            self.anchors, self.strides = (a.transpose(0, 1) for a in make_anchors(x["feats"], self.stride, 0.5))
            self.shape = shape
        return self.decode_bboxes(x["distances"], self.anchors.unsqueeze(0)) * self.strides

    def check_unfused(self, purpose: str) -> None:
        """Raise a one-line error for ``purpose`` (hooks or edits on M's and O's predictors) once ``fuse`` replaced
        them with ``MergedPredictors`` (``TAPDetect``)."""
        if any(getattr(self, f"{prefix}merged_predictors", None) is not None for prefix in BRANCH_PREFIXES):
            raise ValueError(f"{purpose} needs an unfused model: fuse() merged M's and O's predictors")

    def _inference(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decode boxes as ``Detect`` does (with TAP's offsets); the scores are already probabilities, so no sigmoid.

        Only the ``nms_pre`` best (anchor, class) scores of each image (``nms_pre_mode="image"``,
        ``keep_topk_scores``) or of each level (``"level"``, ``keep_topk_scores_per_level``) stay non-zero. Not on
        the NMS-free path (``end2end``): ``nms_pre`` bounds NMS's candidates, and there ``Detect.postprocess`` keeps
        the top ``max_det`` with no NMS, as stock.
        """
        scores = x["scores"]
        if self.nms_pre_mode not in NMS_PRE_MODES:
            raise ValueError(f"nms_pre_mode must be one of {', '.join(NMS_PRE_MODES)}, got {self.nms_pre_mode!r}")
        if self.nms_pre and not self.end2end:
            if self.nms_pre_mode == "level":
                sizes = [f.shape[2] * f.shape[3] for f in x["feats"]]
                scores = keep_topk_scores_per_level(scores, self.nms_pre, sizes)
            else:
                scores = keep_topk_scores(scores, self.nms_pre)
        return torch.cat((self._get_decode_boxes(x), scores), 1)


class DFLExpectation(DFL):
    """Ultralytics' ``DFL`` (same fixed bin weights, same value), computed in layouts that run faster.

    ``DFL`` transposes to (B, reg_max, 4, A) and takes a softmax over axis 1, which onnxruntime's CPU Softmax runs
    through internal transposes. Here the expectation is taken over axis 2 of (B, 4, reg_max, A) with no transpose:
    in an ONNX export as a max-shifted exp and two reductions, in PyTorch as a softmax and a matmul with the bin
    values (timings: docs/export.md).

    Examples:
        >>> x = torch.randn(2, 64, 100)
        >>> torch.allclose(DFLExpectation(16)(x), DFL(16)(x), atol=1e-5)
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Decode distributions (B, 4 * reg_max, A) into expected distances (B, 4, A)."""
        b, _, a = x.shape
        logits = x.view(b, 4, self.c1, a)
        bins = self.conv.weight.view(1, self.c1)
        if torch.onnx.is_in_onnx_export():
            e = (logits - logits.amax(2, keepdim=True)).exp()  # max-shifted: no overflow for large logits
            return (e * bins.view(1, 1, self.c1, 1)).sum(2) / e.sum(2)
        return torch.matmul(bins, logits.softmax(2)).view(b, 4, a)


# Comparators (i, j) that sort 4 values descending (Knuth's 5-comparator network), and that sort a bitonic 4 descending
SORT4 = ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2))
BITONIC4 = ((0, 2), (1, 3), (0, 1), (2, 3))


def _compare_exchange(x: list[torch.Tensor], i: int, j: int) -> None:
    """Put the elementwise larger of ``x[i]``, ``x[j]`` at ``i`` and the smaller at ``j``."""
    x[i], x[j] = torch.maximum(x[i], x[j]), torch.minimum(x[i], x[j])


def top4_network_fits(n: int) -> bool:
    """Whether ``top4_values`` takes N = ``n`` values along its axis: N / 4 a power of two (4, 8, 16, ...)."""
    return n >= 4 and n % 4 == 0 and (n // 4) & (n // 4 - 1) == 0


def top4_values(x: torch.Tensor) -> torch.Tensor:
    """Return ``x.topk(4, dim=2).values`` (the 4 largest along axis 2, descending) with elementwise max / min only.

    A sorting network on views of ``x``: each group of 4 bins is sorted (5 comparators), then sorted groups are merged
    pairwise keeping their top 4 (max(a_i, b_(3-i)) is a bitonic sequence holding the top 4 of a and b; 4 comparators
    sort it). Exact, ties included; it exists because PyTorch's CPU ``topk`` over a short middle axis (DGQP's 16 bins)
    runs one small sort per location (timings: BENCHMARKS.md 27).

    Args:
        x (torch.Tensor): (B, S, N, ...) with N / 4 a power of two (4, 8, 16, ...).

    Returns:
        (torch.Tensor): (B, S, 4, ...), the 4 largest values along axis 2 in descending order.

    Examples:
        >>> x = torch.randn(2, 4, 16, 3, 5)
        >>> torch.equal(top4_values(x), x.topk(4, dim=2).values)
        True
    """
    n = x.shape[2]
    if not top4_network_fits(n):
        raise ValueError(f"top4_values needs N / 4 a power of two along axis 2, got N={n}")
    top = list(x.unflatten(2, (n // 4, 4)).unbind(3))  # 4 tensors (B, S, groups, ...): one sorted group each
    for i, j in SORT4:
        _compare_exchange(top, i, j)
    while top[0].shape[2] > 1:  # merge groups 2g and 2g+1
        even, odd = [t[:, :, 0::2] for t in top], [t[:, :, 1::2] for t in top]
        top = [torch.maximum(even[i], odd[3 - i]) for i in range(4)]
        for i, j in BITONIC4:
            _compare_exchange(top, i, j)
    return torch.cat(top, 2)


class DGQP(nn.Module):
    """GFLv2's distribution-guided quality predictor: a localisation-quality logit from the box distribution's shape.

    Per location and box side, the softmax of the side's DFL logits gives its distribution over the ``reg_max`` bins;
    its ``topk`` largest probabilities and their mean (GFLv2's ``add_mean``) are the statistics, 4 x (topk + 1)
    channels, mapped by 1x1 conv -> ReLU -> 1x1 conv to one logit. A sharp, unimodal side is a well-placed edge.
    As GFLv2 (Li et al., CVPR 2021, section 3.3; implus/GFocalV2 ``reg_conf``): one predictor shared by every level
    (the statistics are in bins, the same at every stride), and the quality's gradient reaches the distribution.

    Args:
        reg_max (int): DFL bins per side (> 1).
        topk (int): Largest probabilities kept per side.
        channels (int): Hidden width.

    Examples:
        >>> dgqp = DGQP(reg_max=16)
        >>> dgqp(torch.randn(2, 64, 5, 6)).shape
        torch.Size([2, 1, 5, 6])
    """

    def __init__(self, reg_max: int = 16, topk: int = DGQP_TOPK, channels: int = DGQP_CHANNELS):
        """Initialize the statistics' sizes and ``reg_conf`` (GFLv2's init: normal std 0.01, zero biases)."""
        super().__init__()
        if reg_max <= topk:
            raise ValueError(f"DGQP needs a DFL distribution of more than {topk} bins per side, got reg_max {reg_max}")
        self.reg_max, self.topk = reg_max, topk
        self.reg_conf = nn.Sequential(
            nn.Conv2d(4 * (topk + 1), channels, 1), nn.ReLU(inplace=True), nn.Conv2d(channels, 1, 1)
        )
        for conv in (self.reg_conf[0], self.reg_conf[-1]):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def statistics(self, boxes: torch.Tensor) -> torch.Tensor:
        """Return the top-k probabilities and their mean per side (B, 4 * (topk + 1), ...) of (B, 4 * reg_max, ...).

        Computed in float32 (a softmax of 16 bins), returned in the dtype of ``boxes``.
        """
        b, spatial = boxes.shape[0], boxes.shape[2:]
        logits = _fp32(boxes).view(b, 4, self.reg_max, *spatial)
        if torch.onnx.is_in_onnx_export():  # onnxruntime's Softmax over a middle axis transposes (see DFLExpectation)
            e = (logits - logits.amax(2, keepdim=True)).exp()
            prob = e / e.sum(2, keepdim=True)
        else:
            prob = logits.softmax(2)
        if self.training or self.topk != 4 or not top4_network_fits(self.reg_max) or one_kernel_forms(prob):
            top = prob.topk(self.topk, dim=2).values  # (B, 4, topk, ...); its backward as GFLv2's
        else:  # CPU and ONNX inference: the same values, faster there (see top4_values)
            top = top4_values(prob)
        return _cast(torch.cat((top, top.mean(2, keepdim=True)), 2).view(b, -1, *spatial), boxes.dtype)

    def forward(self, boxes: torch.Tensor) -> torch.Tensor:
        """Return the quality logit (B, 1, H, W) or (B, 1, A) of box distributions (B, 4 * reg_max, H, W) or
        (B, 4 * reg_max, A) (the levels flattened: one call for all of them)."""
        stats = self.statistics(boxes)
        if stats.dim() == 3:  # the 1x1 convs take (B, C, A, 1)
            return self.reg_conf(stats.unsqueeze(-1)).squeeze(-1)
        return self.reg_conf(stats)


class MergedPredictors(nn.Module):
    """M's and O's predictors (1x1, ReLU, 3x3 each) run as one: a 1x1 conv to both hidden maps, one grouped 3x3.

    The same function as running ``cls_prob`` and ``reg_offset`` one after the other on one feature, in two conv
    calls instead of four: the first convs' weights stacked, and M's 3x3 and O's 3x3 as the two groups of one grouped
    conv, M's group padded with zero output channels to O's width. Built by ``TAPDetect.fuse`` for inference, where
    PyTorch's CPU convolutions of a few channels cost about the same whatever their width. onnxruntime runs the two
    plain convs faster than the grouped one, so an ONNX export runs them from slices of the merged weights.

    Given the stock box and cls convs of the level too (``box_conv``, ``cls_conv``: 1x1 on the box and cls features,
    whose concatenation the predictors read), ``forward_branches`` also runs those: the first 1x1 conv's weights on
    the box features join the box conv's outputs and those on the cls features the cls conv's (W [box; cls] =
    W_box box + W_cls cls), so the concatenated feature is never formed and three 1x1 convs become two.

    Args:
        prob (nn.Sequential): M's predictor, (1x1 conv, ReLU, 3x3 conv to 1 channel).
        offset (nn.Sequential): O's predictor, (1x1 conv, ReLU, 3x3 conv), on the same input and hidden widths.
        box_conv (nn.Conv2d | None): The level's last box conv (1x1), reading the first ``in_channels`` channels of
            the predictors' input.
        cls_conv (nn.Conv2d | None): The level's last cls conv (1x1), reading the remaining channels.

    Examples:
        >>> prob = nn.Sequential(nn.Conv2d(32, 8, 1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
        >>> offset = nn.Sequential(nn.Conv2d(32, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        >>> x = torch.randn(1, 32, 5, 6)
        >>> m, o = MergedPredictors(prob, offset)(x)
        >>> torch.allclose(m, prob(x), atol=1e-6) and torch.allclose(o, offset(x), atol=1e-6)
        True
    """

    def __init__(
        self,
        prob: nn.Sequential,
        offset: nn.Sequential,
        box_conv: nn.Conv2d | None = None,
        cls_conv: nn.Conv2d | None = None,
    ):
        """Copy the two predictors' weights into one 1x1 conv and one grouped 3x3 conv (and the stock convs')."""
        super().__init__()
        (p1, _, p3), (o1, _, o3) = prob, offset
        if p1.weight.shape != o1.weight.shape or p3.out_channels > o3.out_channels:
            raise ValueError("MergedPredictors: M's and O's predictors must read one feature at one hidden width")
        self.m_channels, self.width = p3.out_channels, o3.out_channels  # M's group: its channels, then zero ones
        factory = {"device": p1.weight.device, "dtype": p1.weight.dtype}
        self.hidden = nn.Conv2d(p1.in_channels, 2 * p1.out_channels, 1, **factory)
        self.out = nn.Conv2d(2 * p3.in_channels, 2 * self.width, 3, padding=1, groups=2, **factory)
        with torch.no_grad():
            self.hidden.weight.copy_(torch.cat((p1.weight, o1.weight)))
            self.hidden.bias.copy_(torch.cat((p1.bias, o1.bias)))
            self.out.weight.zero_()
            self.out.bias.zero_()
            self.out.weight[: self.m_channels].copy_(p3.weight)
            self.out.bias[: self.m_channels].copy_(p3.bias)
            self.out.weight[self.width :].copy_(o3.weight)
            self.out.bias[self.width :].copy_(o3.bias)
        self.box, self.cls = (None, None) if box_conv is None else self._branch_convs(box_conv, cls_conv)

    def _branch_convs(self, box_conv: nn.Conv2d, cls_conv: nn.Conv2d) -> tuple[nn.Conv2d, nn.Conv2d]:
        """The box and cls 1x1 convs with the first predictor conv's share of their input as extra outputs."""
        c2, w, b = box_conv.in_channels, self.hidden.weight, self.hidden.bias
        if box_conv.in_channels + cls_conv.in_channels != w.shape[1] or box_conv.kernel_size != (1, 1):
            raise ValueError("MergedPredictors: the box and cls convs must be 1x1 convs of the predictors' input")
        convs = []
        for conv, share, bias in ((box_conv, w[:, :c2], torch.zeros_like(b)), (cls_conv, w[:, c2:], b)):
            merged = nn.Conv2d(conv.in_channels, conv.out_channels + len(b), 1, device=w.device, dtype=w.dtype)
            with torch.no_grad():
                merged.weight.copy_(torch.cat((conv.weight, share)))
                merged.bias.copy_(torch.cat((conv.bias, bias)))
            convs.append(merged)
        return convs[0], convs[1]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return M's logit (B, 1, H, W) and the offsets (B, 8, H, W) of the feature ``x`` (B, C, H, W)."""
        if torch.onnx.is_in_onnx_export():
            return self._plain(x)
        return self._predict(F.relu(self.hidden(x)))

    def forward_branches(
        self, box_feat: torch.Tensor, cls_feat: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the box prediction, cls logits, M's logit and the offsets from the box and cls features (the
        predictors reading their concatenation); needs the stock convs at construction."""
        box, cls = self.box(box_feat), self.cls(cls_feat)
        r, nc = self.box.out_channels - self.hidden.out_channels, self.cls.out_channels - self.hidden.out_channels
        hidden = F.relu(box[:, r:] + cls[:, nc:])
        if torch.onnx.is_in_onnx_export():  # the two plain 3x3 convs, as _plain
            return (box[:, :r], cls[:, :nc], *self._plain_out(hidden.chunk(2, 1)))
        return (box[:, :r], cls[:, :nc], *self._predict(hidden))

    def _predict(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """M's logit and the offsets from both hidden maps (B, 2 * hidden, H, W), by the grouped 3x3 conv."""
        y = self.out(hidden)
        return y[:, : self.m_channels], y[:, self.width :]

    def _plain(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two predictors as they were built (four plain convs), from slices of the merged weights."""
        w1, b1 = self.hidden.weight, self.hidden.bias
        return self._plain_out([F.relu(F.conv2d(x, w, b)) for w, b in zip(w1.chunk(2), b1.chunk(2))])

    def _plain_out(self, hidden: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The two 3x3 convs as plain convs on M's and O's hidden maps, from slices of the grouped weights."""
        w3, b3 = self.out.weight, self.out.bias
        m = F.conv2d(hidden[0], w3[: self.m_channels], b3[: self.m_channels], padding=1)
        return m, F.conv2d(hidden[1], w3[self.width :], b3[self.width :], padding=1)


class Scale(nn.Module):
    """A learnable scalar multiplier, one per pyramid level, as MMDetection's ``Scale``."""

    def __init__(self, scale: float = 1.0):
        """Initialize the scale with value ``scale``."""
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x * scale``."""
        return x * self.scale


class TaskDecomposition(nn.Module):
    """Task decomposition: layer attention over the stacked features, applied as an attention-weighted 1x1 conv.

    As MMDetection's ``TaskDecomposition``: w = sigmoid(conv1x1(relu(conv1x1(avg_pool(feat))))) gives one weight per
    stacked layer; the 1x1 reduction conv (stacked_convs * C -> C) is scaled per sample by w and applied as one batched
    matmul, then GroupNorm + ReLU. This equals sum_k w_k * conv1x1_k(feat_k) without building the weighted features.

    Args:
        feat_channels (int): Channels C of each stacked layer.
        stacked_convs (int): Number of stacked layers whose outputs are concatenated.
        la_down_rate (int): Reduction of the layer-attention bottleneck; the reference uses 8 * stacked_convs.
        levels (int): 0 for one GroupNorm shared over the levels (the reference); else one BatchNorm per level (SepBN,
            see ``SepBNConv``), and ``forward`` takes the level.
        group_width (int): Channels per GroupNorm group; 0 for 32 groups as the reference (``_group_norm``).

    Examples:
        >>> td = TaskDecomposition(64, 3, 24)
        >>> feat = torch.randn(2, 64 * 3, 10, 10)
        >>> td(feat, F.adaptive_avg_pool2d(feat, 1)).shape
        torch.Size([2, 64, 10, 10])
    """

    def __init__(
        self, feat_channels: int, stacked_convs: int, la_down_rate: int, levels: int = 0, group_width: int = 0
    ):
        """Initialize the layer attention and the reduction conv."""
        super().__init__()
        self.feat_channels = feat_channels
        self.stacked_convs = stacked_convs
        self.in_channels = feat_channels * stacked_convs
        hidden = max(self.in_channels // la_down_rate, 1)
        self.layer_attention = nn.Sequential(
            nn.Conv2d(self.in_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, stacked_convs, 1)
        )
        self.reduction_conv = nn.Conv2d(self.in_channels, feat_channels, 1, bias=False)
        self.norm = _level_norms(feat_channels, levels) if levels else _group_norm(feat_channels, group_width)
        self.act = nn.ReLU(inplace=True)
        for m in self.layer_attention:  # as the reference: attention std 0.001, reduction std 0.01
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.reduction_conv.weight, std=0.01)

    def attention(self, avg_feat: torch.Tensor) -> torch.Tensor:
        """Return the layer attention (B, stacked_convs, 1, 1) from the pooled stacked features (B, S*C, 1, 1)."""
        return self.layer_attention(avg_feat).sigmoid()

    def forward(self, feat: torch.Tensor, avg_feat: torch.Tensor, level: int = 0) -> torch.Tensor:
        """Return the task-specific feature (B, C, H, W) of the stacked features ``feat`` (B, S*C, H, W).

        ``level`` selects the BatchNorm when the norms are per level (SepBN); the shared GroupNorm ignores it.
        """
        return self.reduce(feat, self.attention(avg_feat), level)

    def reduce(self, feat: torch.Tensor, weight: torch.Tensor, level: int = 0) -> torch.Tensor:
        """Return the task-specific feature (B, C, H, W) of ``feat`` (B, S*C, H, W) under the layer attention
        ``weight`` (B, S, 1, 1): the attention-scaled reduction conv, the norm (``level``'s for SepBN), ReLU."""
        b, _, h, w = feat.shape
        # (B, 1, S, 1) * (1, C, S, C) -> (B, C, S*C): the reduction weight scaled per stacked layer and sample
        conv_weight = weight.view(b, 1, self.stacked_convs, 1) * self.reduction_conv.weight.view(
            1, self.feat_channels, self.stacked_convs, self.feat_channels
        )
        out = torch.bmm(
            conv_weight.view(b, self.feat_channels, self.in_channels), feat.view(b, self.in_channels, h * w)
        )
        norm = self.norm[level] if isinstance(self.norm, nn.ModuleList) else self.norm
        return self.act(norm(out.view(b, self.feat_channels, h, w)))


def stack_decompositions(decomps: tuple[TaskDecomposition, ...]) -> tuple[torch.Tensor, ...] | None:
    """Return the reduction weights and GroupNorm affines of ``decomps`` stacked along the output channels, for
    ``decompose_tasks``; None when a norm is per level (SepBN), which runs each decomposition on its own."""
    if any(isinstance(d.norm, nn.ModuleList) for d in decomps):
        return None
    return tuple(torch.cat(ts) for ts in zip(*((d.reduction_conv.weight, d.norm.weight, d.norm.bias) for d in decomps)))


def decompose_tasks(
    decomps: tuple[TaskDecomposition, ...],
    stacked: tuple[torch.Tensor, ...] | None,
    feat: torch.Tensor,
    attention: list[torch.Tensor],
    level: int,
) -> list[torch.Tensor]:
    """Run several task decompositions of one stacked feature as one: one batched matmul, one norm, one ReLU.

    The same function as ``d.reduce(feat, w, level)`` for each decomposition ``d`` and its attention ``w``: the
    reductions' output channels are stacked, and a GroupNorm of n * G groups over the n stacked outputs is each
    output's GroupNorm of G groups (the groups are contiguous channels and the statistics per sample and group).

    Args:
        decomps (tuple[TaskDecomposition, ...]): The decompositions (cls, reg), of one width and depth.
        stacked (tuple[torch.Tensor, ...] | None): ``stack_decompositions(decomps)``; None: one at a time (SepBN).
        feat (torch.Tensor): Stacked features (B, S*C, H, W).
        attention (list[torch.Tensor]): Each decomposition's layer attention (B, S, 1, 1).
        level (int): Pyramid level, selecting SepBN's BatchNorm.

    Returns:
        (list[torch.Tensor]): The task-specific features (B, C, H, W), one per decomposition.
    """
    if stacked is None:
        return [d.reduce(feat, w, level) for d, w in zip(decomps, attention)]
    weight, norm_weight, norm_bias = stacked
    d, n = decomps[0], len(decomps)
    b, _, h, w = feat.shape
    c, s = d.feat_channels, d.stacked_convs
    # (B, n, 1, S, 1) * (1, n, C, S, C) -> (B, n*C, S*C): each task's reduction weight scaled per layer and sample
    conv_weight = torch.cat(attention, 1).view(b, n, 1, s, 1) * weight.view(1, n, c, s, c)
    out = torch.bmm(conv_weight.view(b, n * c, s * c), feat.view(b, s * c, h * w)).view(b, n * c, h, w)
    out = F.group_norm(out, n * d.norm.num_groups, norm_weight, norm_bias, d.norm.eps)
    return list(d.act(out).chunk(n, 1))


class TOODDetect(TaskAlignedOutputs, Detect):
    """TOOD's task-aligned head (T-Head + TAP) for YOLOv8, a drop-in ``Detect`` replacement.

    Structure per level l (shared weights across levels as TOOD, except the adapters and scales):

        P_l -> adapter_l (1x1, to C) -> inter_convs (stacked_convs x [3x3 conv, GN, ReLU]) -> concat = feat (S*C)
        feat -> TaskDecomposition(cls) -> cls_conv (3x3) -> cls logits      \\
        feat -> cls_prob (1x1, ReLU, 3x3) -> M                               -> score = sqrt(sig(cls) * sig(M))
        feat -> TaskDecomposition(reg) -> reg_conv (3x3) -> Scale_l -> box  \\
        feat -> reg_offset (1x1, ReLU, 3x3) -> 4 x (dy, dx)                  -> side k measured from a + O_k

    Deviation (docs/head.md): per-level 1x1 ``adapters`` for YOLOv8's unequal neck widths; DFL box regression (so
    ultralytics' decoding, validator and exporter work), with ``Scale_l`` a per-level temperature of the bin logits
    and a fractional offset blending bin logits where the reference blends decoded edges; ``reg_max: 1`` regresses
    Scale_l(exp(x)) as the reference. TAP re-samples each side's channels at a + O_k and measures the side from that
    point (``offset_distances``), the reference's edge of a + O_k; where the box is invalid the un-resampled
    prediction is kept, as the reference (``keep_valid_boxes``).

    Args:
        nc (int): Number of classes.
        feat_channels (int): Width C of the shared stacked convs (scaled by the model width in the YAML).
        stacked_convs (int): Number of stacked 3x3 convs (scaled by the model depth in the YAML).
        norm (str): Normalisation of the shared convs (inter_convs and both decompositions): ``gn``, one GroupNorm
            shared over the levels with 32 groups as the reference; ``gn8``, the same with 8 channels per group (the
            reference's group width; differs from ``gn`` below 256 channels); or ``sepbn``, one BatchNorm per level as
            RTMDet (``SepBNConv``).
        tap (str): TAP's box re-sampling: ``faithful`` (the reference) or ``none`` (no offset branch, for ablations).
        adapter (str): The per-level layer mapping ``ch[l]`` to ``feat_channels``: ``linear``, a 1x1 conv; or ``conv``,
            ultralytics' ``Conv`` (3x3, BatchNorm, SiLU; PyTorch's init), the first layer of each stock Detect branch.
        quality (str): What M reads: ``features`` (``cls_prob`` on the stacked features, the reference),
            ``distribution`` (``DGQP`` on the final box distribution, GFLv2's; DFL heads only) or ``both`` (the sum).
        reg_max (int): DFL bins per side; 1 for plain distances.
        end2end (bool): Build a one-to-one branch too (YOLO26's ``end2end: True``): a copy of the whole T-Head under
            the ``one2one_`` prefix, fed detached features in training, as ultralytics builds its own (``Detect``).
        ch (tuple[int, ...]): Input channels of each level, filled in by ``parse_model``.

    Examples:
        >>> head = TOODDetect(nc=80, feat_channels=64, stacked_convs=2, ch=(64, 128, 256))
        >>> head.stride = torch.tensor([8.0, 16.0, 32.0])
        >>> x = [torch.randn(1, 64, 80, 80), torch.randn(1, 128, 40, 40), torch.randn(1, 256, 20, 20)]
        >>> head.eval()(x)[0].shape
        torch.Size([1, 84, 8400])
    """

    @staticmethod
    def check_args(
        feat_channels: int, stacked_convs: int, norm: str, tap: str, adapter: str, quality: str, reg_max: int
    ) -> None:
        """Raise one ``ValueError`` line naming the first bad argument, its value and what is allowed; build nothing.

        The constructor's checks, callable before a model is built (the train-argument check runs them on a model
        YAML's head row before the trainer makes its run folder). Arguments are the constructor's, ``nc`` aside.
        """
        for name, value in (("feat_channels", feat_channels), ("stacked_convs", stacked_convs), ("reg_max", reg_max)):
            check_int(value, name, "TOODDetect")
        if norm not in HEAD_NORMS:
            raise ValueError(f"TOODDetect: norm must be one of {', '.join(HEAD_NORMS)}, got {norm!r}")
        if norm == "gn8" and feat_channels % GN_GROUP_WIDTH:
            raise ValueError(
                f"TOODDetect: norm 'gn8' needs feat_channels divisible by {GN_GROUP_WIDTH}, got {feat_channels}"
            )
        if tap not in TAP_MODES:
            raise ValueError(f"TOODDetect: tap must be one of {', '.join(TAP_MODES)}, got {tap!r}")
        if adapter not in ADAPTERS:
            raise ValueError(f"TOODDetect: adapter must be one of {', '.join(ADAPTERS)}, got {adapter!r}")
        check_quality(quality, reg_max, "TOODDetect")

    def __init__(
        self,
        nc: int = 80,
        feat_channels: int = 256,
        stacked_convs: int = 6,
        norm: str = "gn",
        tap: str = "faithful",
        adapter: str = "linear",
        quality: str = "features",
        reg_max: int = 16,
        end2end: bool = False,
        ch: tuple[int, ...] | list[int] = (),
    ):
        """Initialize the T-Head for ``len(ch)`` levels."""
        check_int(nc, "nc", "TOODDetect")
        self.check_args(feat_channels, stacked_convs, norm, tap, adapter, quality, reg_max)
        if not ch:
            raise ValueError("TOODDetect: no input levels; its YAML row needs 'from' levels, e.g. [15, 18, 21]")
        # Detect.__init__ would build the stock cv2/cv3 branches only to discard them, so set its attributes here
        nn.Module.__init__(self)
        # No stock branches, as real (empty) attributes that ultralytics reads: the branch dicts (one2many /
        # one2one) hand cv2 to forward_head as "box_head" (None once fuse() dropped the branch); DetectionModel.load
        # compares the source head's cv2 input widths (none here) and skips a cv3 of None; Detect.end2end is False
        # without a one2one_cv2, and its setter only warns when one is asked for (the exporter's nms=False). An
        # end-to-end head has an empty one2one_cv2 too: ultralytics tests it to pick E2ELoss, end2end inference and
        # fusion
        self.cv2 = nn.ModuleList()
        self.cv3 = None
        self.nc = nc
        self.nl = len(ch)
        self.reg_max = reg_max
        self.no = nc + reg_max * 4
        self.stride = torch.zeros(self.nl)
        self.feat_channels = feat_channels
        self.stacked_convs = stacked_convs
        self.norm = norm
        c, s = feat_channels, stacked_convs
        sepbn_levels = self.nl if norm == "sepbn" else 0
        group_width = GN_GROUP_WIDTH if norm == "gn8" else 0

        self.adapter = adapter
        self.adapters = nn.ModuleList(nn.Conv2d(x, c, 1) if adapter == "linear" else Conv(x, c, 3) for x in ch)
        self.inter_convs = nn.ModuleList(
            SepBNConv(c, self.nl)
            if sepbn_levels
            else nn.Sequential(
                nn.Conv2d(c, c, 3, padding=1, bias=False), _group_norm(c, group_width), nn.ReLU(inplace=True)
            )
            for _ in range(s)
        )
        self.cls_decomp = TaskDecomposition(c, s, la_down_rate=8 * s, levels=sepbn_levels, group_width=group_width)
        self.reg_decomp = TaskDecomposition(c, s, la_down_rate=8 * s, levels=sepbn_levels, group_width=group_width)
        self.tood_cls = nn.Conv2d(c, nc, 3, padding=1)
        self.tood_reg = nn.Conv2d(c, 4 * reg_max, 3, padding=1)
        self.quality = quality
        self.cls_prob = (
            nn.Sequential(nn.Conv2d(c * s, c // 4, 1), nn.ReLU(inplace=True), nn.Conv2d(c // 4, 1, 3, padding=1))
            if quality != "distribution"
            else None
        )
        self.dgqp = DGQP(reg_max) if quality != "features" else None  # GFLv2's init (std 0.01), shared by the levels
        self.tap = tap
        self.reg_offset = (
            nn.Sequential(nn.Conv2d(c * s, c // 4, 1), nn.ReLU(inplace=True), nn.Conv2d(c // 4, 4 * 2, 3, padding=1))
            if tap == "faithful"
            else None
        )
        self.scales = nn.ModuleList(Scale(1.0) for _ in ch)
        self.dfl = DFLExpectation(reg_max) if reg_max > 1 else nn.Identity()
        self._init_weights()
        if end2end:  # the one-to-one branch starts as a copy, as Detect's one2one_cv2 / one2one_cv3
            self.one2one_cv2 = nn.ModuleList()
            for name in T_HEAD_MODULES:
                setattr(self, f"one2one_{name}", copy.deepcopy(getattr(self, name)))

    dgqp_key = "dgqp"  # the branch dict's key of DGQP (TaskAlignedOutputs)

    def _branch(self, prefix: str) -> dict[str, nn.Module | None]:
        """The T-Head modules of one branch (``""`` or ``"one2one_"``) by their one-to-many names, plus ``box_head``
        (the branch's ``cv2``: None once ``Detect.fuse`` dropped the branch, which ``forward_head`` reads)."""
        branch = {name: getattr(self, f"{prefix}{name}", None) for name in T_HEAD_MODULES}
        return {"box_head": getattr(self, f"{prefix}cv2", None), **branch}

    @staticmethod
    def _score_logit_convs(b: dict[str, nn.Module | None]) -> list[nn.Conv2d]:
        """The last convs of one branch's class logits and M (``score_convs``), ``b`` as ``_branch`` returns it."""
        prob = [b["cls_prob"][-1]] if b["cls_prob"] is not None else []
        return [b["tood_cls"], *prob, *([b["dgqp"].reg_conf[-1]] if b["dgqp"] is not None else [])]

    def _init_weights(self) -> None:
        """Initialise as MMDetection's TOOD head: normal std 0.01 convs, prior-probability biases, offsets std 0.001.

        ``adapter="conv"`` adapters keep PyTorch's init, as the stock Detect layer they are.
        """
        offset_convs, cls_prob = self.reg_offset or (), self.cls_prob or ()
        linear_adapters = self.adapters if self.adapter == "linear" else ()
        for m, std in (
            *((m, 0.01) for m in (*linear_adapters, *self.inter_convs, self.tood_cls, self.tood_reg, *cls_prob)),
            *((m, OFFSET_INIT_STD) for m in offset_convs),  # both offset convs, as MMDetection's reg_offset
        ):
            for conv in m.modules():
                if isinstance(conv, nn.Conv2d):
                    nn.init.normal_(conv.weight, std=std)
                    if conv.bias is not None:
                        nn.init.zeros_(conv.bias)
        self.bias_init()

    def __setstate__(self, state: dict) -> None:
        """Unpickle, giving a head pickled before ``cv2`` / ``cv3`` were attributes (they were class properties then)
        the same empty stock branches as a new one."""
        super().__setstate__(state)
        if "cv2" not in self._modules:
            self.cv2 = nn.ModuleList()
        if "cv3" not in self.__dict__ and "cv3" not in self._modules:
            self.cv3 = None

    def map_modules(self) -> dict[str, list[nn.Module]]:
        """The modules whose outputs are the head's maps (for forward hooks: the tools' head-map pictures): ``cls``
        logits, M's logit from the features (``prob``) and from the distribution (``quality``), the ``offsets``, the
        layer attention of both decompositions; empty lists where a part is off. Each runs once per level in level
        order, but DGQP, once on the flattened levels ((B, 1, A)), and the layer attention, once on all levels'
        pooled features ((L * B, S, 1, 1), level-major). On an end-to-end head, those of the branch inference runs
        (``end2end``: one-to-one)."""
        b = self.one2one if self.end2end else self.one2many
        return {
            "cls": [b["tood_cls"]],
            "prob": [b["cls_prob"]] if b["cls_prob"] is not None else [],
            "quality": [b["dgqp"]] if b["dgqp"] is not None else [],
            "offsets": [b["reg_offset"]] if b["reg_offset"] is not None else [],
            "cls_attention": [b["cls_decomp"].layer_attention],
            "reg_attention": [b["reg_decomp"].layer_attention],
        }

    def bias_init(self) -> None:
        """Set the cls and probability-map biases to the prior probability 0.01, as the reference.

        Replaces ``Detect.bias_init`` (which is stride-based for the stock branches); DFL/box biases stay zero. M's
        prior is on ``cls_prob``, or on ``dgqp`` when M reads the distribution only (with ``both`` it starts at 0).
        """
        prior_bias = -math.log((1 - PRIOR_PROB) / PRIOR_PROB)
        nn.init.constant_(self.tood_cls.bias, prior_bias)
        m_last = self.cls_prob[-1] if self.cls_prob is not None else self.dgqp.reg_conf[-1]
        nn.init.constant_(m_last.bias, prior_bias)

    def level_maps(self, x: torch.Tensor, level: int, **branch: nn.Module | None) -> LevelMaps:
        """Run the T-Head on one level alone, up to TAP (``tower_maps`` of that level)."""
        return self.tower_maps([x], [level], branch)[0]

    def all_level_maps(self, x: list[torch.Tensor], branch: dict[str, nn.Module | None]) -> list[LevelMaps]:
        """Run the T-Head on every level, up to TAP (``tower_maps``)."""
        return self.tower_maps(x, list(range(len(x))), branch)

    def tower_maps(self, xs: list[torch.Tensor], levels: list[int], b: dict[str, nn.Module | None]) -> list[LevelMaps]:
        """Run the T-Head's tower and predictions on levels ``levels``, with the work the levels share batched.

        The stacked features of each level come first; the layer attention of each task then runs once on the
        pooled features of all levels (its weights are shared and its input is (B, S*C, 1, 1) at every level), and
        both tasks' decompositions of a level run as one batched matmul and one norm (``decompose_tasks``).

        Args:
            xs (list[torch.Tensor]): Neck features (B, ch[level], H, W), one per entry of ``levels``.
            levels (list[int]): Their pyramid level indices, selecting the adapters, scales and SepBN norms.
            b (dict): The branch's modules (``one2many`` or ``one2one``, as ``Detect.forward`` passes them).

        Returns:
            (list[LevelMaps]): Per level, the box prediction (scaled), cls logits, M's logits from the features (None
                for ``quality="distribution"``) and the offsets (None for ``tap="none"``).
        """
        feats = [self._stacked_features(x, level, b) for x, level in zip(xs, levels)]  # (B, S*C, H, W) each
        pooled = _cat([F.adaptive_avg_pool2d(f, 1) for f in feats], 0)  # (L*B, S*C, 1, 1), shared by both tasks
        decomps = (b["cls_decomp"], b["reg_decomp"])
        # per task (L, B, S, 1, 1); unflatten, not split(B): an export traced at one batch size runs at others
        attention = [d.attention(pooled).unflatten(0, (len(feats), -1)) for d in decomps]
        stacked = stack_decompositions(decomps)
        maps = []
        for i, (feat, level) in enumerate(zip(feats, levels)):
            cls_feat, reg_feat = decompose_tasks(decomps, stacked, feat, [a[i] for a in attention], level)
            maps.append(self._predict(feat, cls_feat, reg_feat, level, b))
        return maps

    def _stacked_features(self, x: torch.Tensor, level: int, b: dict[str, nn.Module | None]) -> torch.Tensor:
        """The adapter and the stacked convs of one level, concatenated: (B, S*C, H, W)."""
        x = b["adapters"][level](x)
        inter_feats = []
        for conv in b["inter_convs"]:
            x = conv(x, level) if isinstance(conv, SepBNConv) else conv(x)
            inter_feats.append(x)
        return torch.cat(inter_feats, 1)

    def _predict(
        self,
        feat: torch.Tensor,
        cls_feat: torch.Tensor,
        reg_feat: torch.Tensor,
        level: int,
        b: dict[str, nn.Module | None],
    ) -> LevelMaps:
        """The level's predictions from its stacked features and its two task-specific features."""
        cls_logits = b["tood_cls"](cls_feat)
        prob_logits = b["cls_prob"](feat) if b["cls_prob"] is not None else None
        reg = b["tood_reg"](reg_feat)  # (B, 4*reg_max, H, W)
        if self.reg_max == 1:
            # Plain distances as the reference, Scale_l(exp(x)) in stride units: positive for any conv output, so the
            # un-resampled fallback of the validity test is always a valid box (a raw output could invert a box,
            # which GIoU does not push back: MMDetection PR #7567). exp in float32 (in fp16 it overflows above
            # x = 11.1) of x clamped at log(1e4): a distance of 10^4 strides is past any image, and an inf distance
            # would make the decoded box NaN (inf - inf); MMDetection has no clamp, its exp simply overflows there
            reg = _fp32(reg).clamp(max=MAX_LOG_DISTANCE).exp()
        reg = b["scales"][level](reg)  # DFL: a per-level temperature of the bin logits, initialised at 1
        offsets = b["reg_offset"](feat) if b["reg_offset"] is not None else None  # (B, 8, H, W)
        return LevelMaps(reg, cls_logits, prob_logits, offsets)
