"""The T-Head's task decomposition (layer attention over the stacked features) and its norms (GroupNorm, SepBN)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Normalisation of the shared head convs: "gn" one GroupNorm shared over levels (MMDetection's TOOD head: 32 groups),
# "gn8" the same with the reference's group WIDTH instead of its count (8 channels per group, as 256 / 32; at scale n's
# 64 channels "gn" has 32 groups of 2), "sepbn" one BatchNorm per level behind the shared conv weights (RTMDet's
# SepBN; the stacked convs' fold into them at export)
HEAD_NORMS = ("gn", "gn8", "sepbn")


GN_GROUP_WIDTH = 8  # channels per group of norm="gn8": the reference's 256 channels / 32 groups


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
