"""What M reads from the box distribution: GFLv2's distribution-guided quality predictor (DGQP) and its top-4."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..checks import check_choice
from .tap import _cast, _fp32, one_kernel_forms

# What the probability map M reads: features (TOOD's cls_prob on the task-interactive feature), distribution (GFLv2's
# DGQP on the final, re-sampled box distribution) or both (the sum of the two logits)
QUALITY_MODES = ("features", "distribution", "both")


# GFLv2's DGQP settings, as implus/GFocalV2 configs/gfocal/gfocal_r50_fpn_1x.py: reg_topk 4, reg_channels 64, add_mean
DGQP_TOPK = 4


DGQP_CHANNELS = 64


def check_quality(quality: str, reg_max: int, head: str) -> None:
    """Raise a one-line ``ValueError`` when ``quality`` is not a ``QUALITY_MODES`` value or needs a distribution that
    a ``reg_max`` head does not have."""
    check_choice(quality, QUALITY_MODES, "quality", head)
    if quality != "features" and reg_max <= DGQP_TOPK:
        raise ValueError(
            f"{head}: quality {quality!r} reads the DFL box distribution, which a reg_max {reg_max} head does not "
            "have; use quality 'features'"
        )


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
