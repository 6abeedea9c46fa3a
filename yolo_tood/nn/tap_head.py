"""TOOD's task-aligned predictor (TAP) on the stock YOLO head: ``TAPDetect``, a head that fine-tunes from stock weights.

Ultralytics transfers pretrained weights by name and shape only (``DetectionModel.load``), so the T-Head of
``TOODDetect`` inherits nothing of a trained stock head. ``TAPDetect`` keeps every stock ``Detect`` parameter under its
stock name and shape (``cv2``, ``cv3``, ``dfl``; YOLOv8's legacy cls branch or YOLO11's depthwise one, as
``parse_model`` chooses) and adds TOOD's task-aligned predictor (paper section 3.1) per level:

    P_l -> cv2_l[:-1] -> box feature  -> cv2_l[-1] -> box prediction (DFL)   \\
    P_l -> cv3_l[:-1] -> cls feature  -> cv3_l[-1] -> cls logits              |
    [box feature, cls feature] = task-interactive feature                    |
        -> cls_prob_l (1x1, ReLU, 3x3) -> M        score = sqrt(sig(cls) * sig(M))
        -> reg_offset_l (1x1, ReLU, 3x3) -> O       side k re-sampled at a + O_k (TAP, as TOODDetect)

The reference reads M and O from the T-Head's stacked features, which both tasks share; the stock head has no shared
tower, so the task-interactive feature here is the last hidden feature of each branch, concatenated. The predictor
is per level, as the stock branches it reads.

``interact="box_to_cls"`` (opt-in) also lets the class prediction read the box branch's feature, a piece of TOOD's
task interaction (paper section 3.1: both predictions are computed from features both tasks share) on the stock
branches, so that the score can learn from what the box branch knows of localisation quality:

    cls feature += cls_from_box_l(box feature)     (1x1 conv per level, before cv3's last conv and before the
                                                    task-interactive feature is formed)

The reference has no such layer (its tower is shared from the start); here it is the cheapest shared path a
transferred stock head can grow. One direction only: both directions cost 1.059x stock's GFLOPs at yolo11n (80
classes, 640 px), over the 1.05x budget; the class score is the side TOOD's alignment is about.

``quality`` chooses what M reads: ``features`` (the task-interactive feature, TOOD's), ``distribution`` (GFLv2's
``DGQP``: statistics of the side distributions of the box that is decoded, after re-sampling) or ``both`` (the sum of
the two logits). The stock box branch is GFL's distribution (DFL, reg_max 16), so the quality costs one small
predictor shared by the levels.

On an end-to-end model (YOLO26: ``end2end: True``) ``Detect`` builds a one-to-one branch, ``one2one_cv2`` /
``one2one_cv3`` (deep copies of the stock branches, fed detached features in training); the predictor is built for
each branch, the one-to-one's named with the same ``one2one_`` prefix (``one2one_cls_prob``, ``one2one_reg_offset``,
...), so that ``Detect.fuse`` keeps the predictor of the branch inference uses and drops the other's. With ``reg_max:
1`` (YOLO26) the box prediction stays stock's raw distances (``dfl`` is ``nn.Identity``, box bias 2.0), so the weights
transfer; TAP re-samples those distances as it re-samples DFL bins.

It starts as the stock model: the last conv of ``cls_prob``, ``dgqp`` and ``reg_offset`` has zero weights, so right
after a stock checkpoint is loaded M is a constant (score a monotone map of stock's sigmoid) and every offset is 0 (the
stock boxes exactly); the cross-task conv of ``interact="box_to_cls"`` starts at zero weights and bias (adds 0).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from ultralytics.nn.modules import Detect

from ..checks import check_choice
from .inference import TaskAlignedOutputs
from .quality import DGQP
from .tap import OFFSET_INIT_STD, DFLExpectation, LevelMaps

__all__ = ("INTERACT_MODES", "TAPDetect", "TAP_PRIOR_PROB")

# Task interaction between the stock branches: none (the stock branches as they are) or box_to_cls (the cls branch's
# last hidden feature plus a 1x1 projection of the box branch's; see the module docstring)
INTERACT_MODES = ("none", "box_to_cls")

# Deviation: M's bias prior. The reference's 0.01 is for a head trained from scratch; on a transferred cls branch it
# would scale every trained score p to sqrt(0.01 p) (0.05 at p = 0.25), under ultralytics' predict threshold
# (conf 0.25) for all of them. With sigmoid(M) = 0.25, sqrt(0.25 p) = p exactly at p = 0.25, so right after loading a
# stock checkpoint predict() keeps the same boxes as stock at its default threshold (and ranks them as stock).
TAP_PRIOR_PROB = 0.25


def _zero_conv1x1(in_channels: int, out_channels: int) -> nn.Conv2d:
    """A 1x1 conv with zero weights and bias: a new path that adds nothing until it is trained."""
    conv = nn.Conv2d(in_channels, out_channels, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def _predictor(in_channels: int, out_channels: int) -> nn.Sequential:
    """TAP's predictor: 1x1 (to a quarter of the width), ReLU, 3x3 (as MMDetection's ``cls_prob`` / ``reg_offset``)."""
    hidden = max(in_channels // 4, 1)
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, out_channels, 3, padding=1)
    )


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


class TAPDetect(TaskAlignedOutputs, Detect):
    """Stock ``Detect`` with TOOD's task-aligned predictor: M, offsets, aligned score and TAP's box re-sampling.

    Every stock parameter keeps its stock name and shape, so ``pretrained=<stock .pt>`` transfers what a stock model
    transfers from it; ``cls_prob``, ``dgqp``, ``reg_offset`` and ``cls_from_box`` are the only new tensors. The
    training dict is TOODDetect's (``boxes``, ``offsets``, ``scores`` as aligned probabilities, ``feats``), so
    ``TOODLoss`` trains it unchanged, and inference (``TaskAlignedOutputs``) decodes the re-sampled boxes and bounds
    the candidates before NMS.

    Args:
        nc (int): Number of classes.
        tap (str): TAP's box re-sampling: ``faithful`` (the reference) or ``none`` (no offset branch: the stock box
            prediction, only the score is aligned), for ablations.
        interact (str): ``none`` (the stock branches as they are) or ``box_to_cls`` (the cls feature also reads the
            box feature through a zero-initialised 1x1 conv per level; opt-in, see the module docstring).
        quality (str): What M reads: ``features`` (``cls_prob`` on the task-interactive feature, TOOD's),
            ``distribution`` (``DGQP`` on the final box distribution, GFLv2's) or ``both`` (the sum of the logits).
        reg_max (int): DFL bins per side, filled in by ``parse_model``.
        end2end (bool): Build the one-to-one branch too (``one2one_cv2`` / ``one2one_cv3`` as ``Detect``, each with
            its own predictor); set by ``parse_model`` from the YAML's ``end2end`` (YOLO26).
        ch (tuple[int, ...]): Input channels of each level, filled in by ``parse_model``.

    Examples:
        >>> head = TAPDetect(nc=80, ch=(64, 128, 256))
        >>> head.stride = torch.tensor([8.0, 16.0, 32.0])
        >>> x = [torch.randn(1, 64, 80, 80), torch.randn(1, 128, 40, 40), torch.randn(1, 256, 20, 20)]
        >>> head.eval()(x)[0].shape
        torch.Size([1, 84, 8400])
    """

    @classmethod
    def check_args(cls, tap: str, interact: str, quality: str, reg_max: int) -> None:
        """Raise one ``ValueError`` line naming the first bad argument, its value and what is allowed; build nothing.

        The constructor's checks, callable before a model is built (the train-argument check runs them on a model
        YAML's head row before the trainer makes its run folder). Arguments are the constructor's, ``nc`` aside.
        """
        cls.check_shared_args(tap, quality, reg_max)
        check_choice(interact, INTERACT_MODES, "interact", cls.__name__)

    def __init__(
        self,
        nc: int = 80,
        tap: str = "faithful",
        interact: str = "none",
        quality: str = "features",
        reg_max: int = 16,
        end2end: bool = False,
        ch: tuple[int, ...] | list[int] = (),
    ):
        """Initialize the stock branches (``Detect.__init__``) and the task-aligned predictor on top."""
        self.check_levels(nc, ch)
        self.check_args(tap, interact, quality, reg_max)
        super().__init__(nc, reg_max, end2end, ch)
        if reg_max > 1:
            # Stock's DFL, re-arranged (same function, same fixed weights, same ``dfl.conv.weight`` key): TAP decodes
            # distances per level for its validity test as well as once for the boxes, where stock's transpose +
            # softmax over axis 1 is slow in onnxruntime
            self.dfl = DFLExpectation(reg_max)
        self.tap = tap
        self.interact = interact
        self.quality = quality
        self._build_predictor()

    dgqp_key = "quality_head"  # the branch dict's key of DGQP (TaskAlignedOutputs)

    def _branch(self, prefix: str) -> dict[str, nn.Module | None]:
        """The modules of one branch (``prefix`` in ``BRANCH_PREFIXES``), under ``level_maps``' keyword names.

        ``box_head`` / ``cls_head`` are ``Detect``'s keys (its ``bias_init`` reads them); None once fused away.
        """
        return {
            "box_head": getattr(self, f"{prefix}cv2", None),
            "cls_head": getattr(self, f"{prefix}cv3", None),
            "prob_head": getattr(self, f"{prefix}cls_prob", None),
            "quality_head": getattr(self, f"{prefix}dgqp", None),  # absent from checkpoints saved before quality
            "offset_head": getattr(self, f"{prefix}reg_offset", None),
            "interact_head": getattr(self, f"{prefix}cls_from_box", None),  # absent from checkpoints before interact
            "merged_head": getattr(self, f"{prefix}merged_predictors", None),  # built by fuse()
        }

    def _interactive_channels(self) -> int:
        """Width of the task-interactive feature: the box branch's last hidden width plus the cls branch's."""
        return self.cv2[0][-1].in_channels + self.cv3[0][-1].in_channels

    def _build_predictor(self) -> None:
        """Build ``cls_prob``, ``dgqp``, ``reg_offset`` and ``cls_from_box`` for the branch widths, at a no-op init."""
        c = self._interactive_channels()
        device, dtype = self.cv3[0][-1].weight.device, self.cv3[0][-1].weight.dtype
        c2, c3 = self.cv2[0][-1].in_channels, self.cv3[0][-1].in_channels
        quality = getattr(self, "quality", "features")  # absent from checkpoints saved before it
        self.predictor_width = c
        for prefix in self.branch_prefixes():
            setattr(
                self,
                f"{prefix}cls_from_box",
                nn.ModuleList(_zero_conv1x1(c2, c3) for _ in range(self.nl)).to(device, dtype)
                if getattr(self, "interact", "none") == "box_to_cls"  # absent from checkpoints saved before it
                else None,
            )
            setattr(
                self,
                f"{prefix}cls_prob",
                nn.ModuleList(_predictor(c, 1) for _ in range(self.nl)).to(device, dtype)
                if quality != "distribution"
                else None,
            )
            # one DGQP per branch shared by the levels, as GFLv2 (its statistics are in bins, the same at every stride)
            setattr(self, f"{prefix}dgqp", DGQP(self.reg_max).to(device, dtype) if quality != "features" else None)
            setattr(
                self,
                f"{prefix}reg_offset",
                nn.ModuleList(_predictor(c, 4 * 2) for _ in range(self.nl)).to(device, dtype)
                if self.tap == "faithful"
                else None,
            )
        branches = [self._branch(prefix) for prefix in self.branch_prefixes()]
        stds = [(p, 0.01) for b in branches for p in b["prob_head"] or ()]
        stds += [(p, OFFSET_INIT_STD) for b in branches for p in b["offset_head"] or ()]
        for predictor, std in stds:
            nn.init.normal_(predictor[0].weight, std=std)  # the first conv as the reference: M 0.01, offsets 0.001
            nn.init.zeros_(predictor[0].bias)
        # Deviation: zero last weights (the reference: std 0.01 for M, 0.001 for O, GFLv2's DGQP 0.01) so that the head
        # starts as the stock head it was loaded from; the weights still get gradients (their input, the hidden map, is
        # not 0), as YOLOv6 and PP-YOLOE start their zero-initialised predictors
        for last in self._last_convs():
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self._init_prob_bias()

    @staticmethod
    def _score_logit_convs(b: dict[str, nn.Module | None]) -> list[nn.Conv2d]:
        """The last convs of one branch's class logits (per level) and M (``score_convs``), ``b`` as ``_branch``."""
        convs = [branch[-1] for branch in b["cls_head"]] + [p[-1] for p in b["prob_head"] or ()]
        return convs + ([b["quality_head"].reg_conf[-1]] if b["quality_head"] is not None else [])

    def _last_convs(self) -> list[nn.Conv2d]:
        """The last conv of every predictor of M and O, in every branch (zero at the no-op start)."""
        convs = []
        for b in map(self._branch, self.branch_prefixes()):
            convs += [p[-1] for p in (*(b["prob_head"] or ()), *(b["offset_head"] or ()))]
            convs += [b["quality_head"].reg_conf[-1]] if b["quality_head"] is not None else []
        return convs

    def _init_prob_bias(self) -> None:
        """Set M's bias to the prior ``TAP_PRIOR_PROB`` in every branch (see there why not the reference's 0.01).

        With ``quality="both"`` the prior is on the features' logit and the distribution's starts at 0 (M is their sum).
        """
        prior = -math.log((1 - TAP_PRIOR_PROB) / TAP_PRIOR_PROB)
        for b in map(self._branch, self.branch_prefixes()):
            m_last = [p[-1] for p in b["prob_head"]] if b["prob_head"] is not None else [b["quality_head"].reg_conf[-1]]
            for conv in m_last:
                nn.init.constant_(conv.bias, prior)

    def bias_init(self) -> None:
        """Initialise the stock biases as ``Detect`` does, then M's prior; rebuild the predictor if cv3 was rebuilt.

        ``DetectionModel.load`` rebuilds ``cv3`` at the source checkpoint's width when the class counts make the
        widths differ (a COCO checkpoint, 80 classes, on a 7-class set) and then calls ``bias_init``: the
        task-interactive feature is then wider, so the predictor is built again for it (at its no-op init) before the
        state dict is loaded.
        """
        super().bias_init()
        if hasattr(self, "predictor_width"):  # Detect.__init__ has not built the predictor yet when it first calls it
            if self.predictor_width != self._interactive_channels():
                self._build_predictor()
            else:
                self._init_prob_bias()

    def fuse(self) -> None:
        """Drop the branch inference does not use (``Detect.fuse``), then run each remaining branch's M and O
        predictors of a level as one, with the level's last box and cls convs (``MergedPredictors``,
        ``merged_predictors`` with the branch's prefix, in place of ``cls_prob`` and ``reg_offset``): the same outputs
        in fewer conv calls and no concatenated feature."""
        super().fuse()
        for prefix in self.branch_prefixes():
            prob, offset = getattr(self, f"{prefix}cls_prob", None), getattr(self, f"{prefix}reg_offset", None)
            if prob is None or offset is None:  # quality="distribution" or tap="none": one predictor, nothing to merge
                continue
            box, cls = (b[-1] for b in getattr(self, f"{prefix}cv2")), (c[-1] for c in getattr(self, f"{prefix}cv3"))
            setattr(self, f"{prefix}merged_predictors", nn.ModuleList(map(MergedPredictors, prob, offset, box, cls)))
            setattr(self, f"{prefix}cls_prob", None)
            setattr(self, f"{prefix}reg_offset", None)

    def map_modules(self) -> dict[str, list[nn.Module]]:
        """The modules whose outputs are the head's maps, as ``TOODDetect.map_modules``: the stock cls branch's last
        conv, M's predictors, the offsets; no layer attention. On an end-to-end head, those of the branch inference
        runs (``end2end``: one-to-one)."""
        self.check_unfused("hooks on the head's maps")  # fused, M and O come from merged_predictors
        b = self.one2one if self.end2end else self.one2many
        return {
            "cls": [branch[-1] for branch in b["cls_head"]],
            "prob": list(b["prob_head"] or ()),
            "quality": [b["quality_head"]] if b["quality_head"] is not None else [],
            "offsets": list(b["offset_head"] or ()),
            "cls_attention": [],
            "reg_attention": [],
        }

    def level_maps(self, x: torch.Tensor, level: int, **branch: nn.Module | None) -> LevelMaps:
        """Run one branch's stock layers and task-aligned predictor on one level, up to TAP.

        Args:
            x (torch.Tensor): Neck feature (B, ch[level], H, W).
            level (int): Pyramid level index.
            **branch: The branch's modules (``one2many`` or ``one2one``, as ``Detect.forward`` passes them).

        Returns:
            (LevelMaps): The stock box prediction and cls logits, M's logits from the features (None for
                ``quality="distribution"``) and the offsets (None for ``tap="none"``) of the level.
        """
        b = branch
        box_branch, cls_branch = b["box_head"][level], b["cls_head"][level]
        box_feat = box_branch[:-1](x)  # (B, c2, H, W)
        cls_feat = cls_branch[:-1](x)  # (B, c3, H, W)
        if b["interact_head"] is not None:  # interact="box_to_cls"
            cls_feat = cls_feat + b["interact_head"][level](box_feat)  # (B, c3, H, W)
        if b["merged_head"] is not None:  # fused for inference: the last stock convs, cls_prob and reg_offset in one
            return LevelMaps(*b["merged_head"][level].forward_branches(box_feat, cls_feat))
        feat = torch.cat((box_feat, cls_feat), 1)  # task-interactive feature (B, c2 + c3, H, W)
        reg, cls_logits = box_branch[-1](box_feat), cls_branch[-1](cls_feat)
        prob_logits = b["prob_head"][level](feat) if b["prob_head"] is not None else None  # (B, 1, H, W)
        offsets = b["offset_head"][level](feat) if b["offset_head"] is not None else None  # (B, 8, H, W)
        return LevelMaps(reg, cls_logits, prob_logits, offsets)
