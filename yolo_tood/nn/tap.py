"""TOOD's task-aligned predictor (TAP) after the heads' maps: re-sampling, validity test, aligned score.

The steps every task-aligned head shares once it has, per level, its box prediction, cls logits, probability map M
and offsets (paper section 3.1; MMDetection's ``tood_head.py``), run once over the levels flattened into (B, C, A):
``task_aligned_outputs``. Deviations, each for YOLO's DFL boxes or for export, are marked "Deviation" where they
happen.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from ultralytics.nn.modules import DFL

# Offset channels along each side's own axis in the (dy, dx) x (left, top, right, bottom) layout: dx_l, dy_t, dx_r, dy_b
SIDE_SHIFT_CHANNELS = (1, 2, 5, 6)


OFFSET_INIT_STD = 0.001  # both reg_offset convs, as MMDetection's TOOD head (normal_init(std=0.001)), so samples start
# at the anchor


# TAP's box re-sampling: "faithful" the reference's (side k from the edge location a + O_k predicts), "none" no
# re-sampling at all (no offset branch; boxes decoded around each anchor as stock Detect), for ablations
TAP_MODES = ("faithful", "none")


# Forces the forms of one_kernel_forms whatever the device (True: a GPU's, False: the CPU's); None chooses by device.
# For counting a GPU's launches on the CPU (scripts/bench_launches.py) and for tests: the forms give the same values.
ONE_KERNEL_FORMS: bool | None = None


def one_kernel_forms(x: torch.Tensor) -> bool:
    """Whether to compute on ``x`` with the forms that launch fewest kernels (one ``topk`` over all pairs or bins)
    rather than the forms that run faster on a CPU and in onnxruntime (two small TopKs; a sorting network of
    elementwise ops, ``top4_values``): True on every device but the CPU (or as ``ONE_KERNEL_FORMS`` forces), and
    never when exporting. Both forms give the same values (tests/test_quality.py, tests/test_nms_pre.py)."""
    if torch.onnx.is_in_onnx_export():
        return False
    return x.device.type != "cpu" if ONE_KERNEL_FORMS is None else ONE_KERNEL_FORMS


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


def side_shift_pairs(offsets: torch.Tensor) -> torch.Tensor:
    """Return ``side_shifts`` as a view (B, 2, 2, ...): ((dx_l, dy_t), (dx_r, dy_b)), the shifts of (x1, y1), (x2, y2).

    The channels 1, 2, 5, 6 that ``side_shifts`` picks are two runs of two, 4p + 1 and 4p + 2, which a view reaches
    with no copy (and, on CUDA, no index tensor copied to the device).

    Args:
        offsets (torch.Tensor): Offsets (B, 8, ...), (dy, dx) per side (left, top, right, bottom).

    Returns:
        (torch.Tensor): (B, 2, 2, ...) view of ``offsets``.
    """
    return offsets.unflatten(1, (2, 4))[:, :, 1:3]


def faithful_distances(distances: torch.Tensor, offsets: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """Return the distances of TAP's faithful box from the anchor: ``distances + offset_distances(offsets)``.

    Args:
        distances (torch.Tensor): (B, 4, A) re-sampled distances d(a + O_k), (left, top, right, bottom).
        offsets (torch.Tensor): (B, 8, A) offsets, (dy, dx) per side.
        signs (torch.Tensor): (2, 1, 1) the signs (-1, 1) of the (left, top) and (right, bottom) shifts.

    Returns:
        (torch.Tensor): (B, 2, 2, A) distances ((left, top), (right, bottom)) from the anchor.
    """
    return torch.addcmul(distances.unflatten(1, (2, 2)), side_shift_pairs(offsets), signs)


def valid_boxes(distances: torch.Tensor) -> torch.Tensor:
    """Return where a box is valid (x1 <= x2 and y1 <= y2): left + right >= 0 and top + bottom >= 0.

    Args:
        distances (torch.Tensor): (B, 2, 2, ...) distances ((left, top), (right, bottom)), ``faithful_distances``.

    Returns:
        (torch.Tensor): (B, 1, ...) bool.
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
    valid = valid_boxes(distances.unflatten(1, (2, 2)))  # (B, 1, ...)
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
