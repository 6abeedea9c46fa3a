"""TOOD's task-aligned head (T-Head) with its task-aligned predictor (TAP), as an ultralytics ``Detect`` subclass.

Follows the TOOD paper (Feng et al., ICCV 2021, section 3.1) and MMDetection's ``tood_head.py``; the names
(``inter_convs``, ``TaskDecomposition``, ``cls_prob``, ``reg_offset``) are the reference's (MMDetection's modules are
``cls_prob_module`` / ``reg_offset_module``). Deviations, each for YOLOv8's neck or for export, are marked
"Deviation" where they happen.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from ultralytics.nn.modules import Conv, Detect

from ..checks import check_choice, check_int
from .decomposition import (
    GN_GROUP_WIDTH,
    HEAD_NORMS,
    SepBNConv,
    TaskDecomposition,
    _group_norm,
    decompose_tasks,
    stack_decompositions,
)
from .inference import TaskAlignedOutputs
from .quality import DGQP
from .tap import OFFSET_INIT_STD, DFLExpectation, LevelMaps, _cat, _fp32

PRIOR_PROB = 0.01  # cls and probability-map bias prior, as MMDetection's TOOD head


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


# Plain distances (reg_max 1) are exp(x) in stride units as the reference; x is clamped here (see _predict)
MAX_LOG_DISTANCE = math.log(1e4)


# The per-level layer that maps each neck level to the shared width: "linear" a 1x1 conv (the smallest map for YOLOv8's
# unequal neck widths), "conv" ultralytics' Conv (3x3 conv, BatchNorm, SiLU), the layer each branch of stock Detect
# starts with; per-level capacity where it is cheap (P4/P5 maps are 4x/16x smaller than P3), for ablations
ADAPTERS = ("linear", "conv")


class Scale(nn.Module):
    """A learnable scalar multiplier, one per pyramid level, as MMDetection's ``Scale``."""

    def __init__(self, scale: float = 1.0):
        """Initialize the scale with value ``scale``."""
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x * scale``."""
        return x * self.scale


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

    @classmethod
    def check_args(
        cls, feat_channels: int, stacked_convs: int, norm: str, tap: str, adapter: str, quality: str, reg_max: int
    ) -> None:
        """Raise one ``ValueError`` line naming the first bad argument, its value and what is allowed; build nothing.

        The constructor's checks, callable before a model is built (the train-argument check runs them on a model
        YAML's head row before the trainer makes its run folder). Arguments are the constructor's, ``nc`` aside.
        """
        cls.check_shared_args(tap, quality, reg_max)
        for name, value in (("feat_channels", feat_channels), ("stacked_convs", stacked_convs)):
            check_int(value, name, cls.__name__)
        check_choice(norm, HEAD_NORMS, "norm", cls.__name__)
        if norm == "gn8" and feat_channels % GN_GROUP_WIDTH:
            raise ValueError(
                f"{cls.__name__}: norm 'gn8' needs feat_channels divisible by {GN_GROUP_WIDTH}, got {feat_channels}"
            )
        check_choice(adapter, ADAPTERS, "adapter", cls.__name__)

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
        """Initialize ``Detect`` (``nc``, ``nl``, ``reg_max``, ``no``, ``stride``), then the T-Head in place of its
        stock branches, for ``len(ch)`` levels."""
        self.check_levels(nc, ch)
        self.check_args(feat_channels, stacked_convs, norm, tap, adapter, quality, reg_max)
        # Detect builds stock cv2/cv3 branches that the T-Head drops; building them under a forked RNG leaves the
        # T-Head's initial weights at a given seed what they were when it skipped Detect.__init__. The one-to-one
        # branch is the T-Head's own copy (below), not Detect's copy of cv2/cv3
        with torch.random.fork_rng(devices=[]):
            super().__init__(nc, reg_max, False, ch)
        # No stock branches, as real (empty) attributes that ultralytics reads: the branch dicts (one2many /
        # one2one) hand cv2 to forward_head as "box_head" (None once fuse() dropped the branch); DetectionModel.load
        # compares the source head's cv2 input widths (none here) and skips a cv3 of None; Detect.end2end is False
        # without a one2one_cv2, and its setter only warns when one is asked for (the exporter's nms=False)
        self.cv2, self.cv3 = nn.ModuleList(), None
        self.feat_channels, self.stacked_convs, self.norm = feat_channels, stacked_convs, norm
        self.adapter, self.quality, self.tap = adapter, quality, tap
        self._build_tower(ch)
        self._build_predictors()
        self.dfl = DFLExpectation(reg_max) if reg_max > 1 else nn.Identity()
        self._init_weights()
        if end2end:  # the one-to-one branch starts as a copy, as Detect's one2one_cv2 / one2one_cv3; ultralytics
            self.one2one_cv2 = nn.ModuleList()  # tests one2one_cv2 to pick E2ELoss, end-to-end inference and fusion
            for name in T_HEAD_MODULES:
                setattr(self, f"one2one_{name}", copy.deepcopy(getattr(self, name)))

    def _build_tower(self, ch: tuple[int, ...] | list[int]) -> None:
        """Build the per-level adapters, the shared stacked convs, both task decompositions and the cls and box convs
        (``feat_channels`` wide, ``stacked_convs`` deep, normalised by ``norm``)."""
        c, s = self.feat_channels, self.stacked_convs
        sepbn_levels = self.nl if self.norm == "sepbn" else 0
        group_width = GN_GROUP_WIDTH if self.norm == "gn8" else 0
        self.adapters = nn.ModuleList(nn.Conv2d(x, c, 1) if self.adapter == "linear" else Conv(x, c, 3) for x in ch)
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
        self.tood_cls = nn.Conv2d(c, self.nc, 3, padding=1)
        self.tood_reg = nn.Conv2d(c, 4 * self.reg_max, 3, padding=1)

    def _build_predictors(self) -> None:
        """Build TAP's branches on the stacked features: M's ``cls_prob`` and/or ``dgqp`` (by ``quality``), the
        ``reg_offset`` (``tap="faithful"``), and the per-level ``scales``."""
        c, s = self.feat_channels, self.stacked_convs
        self.cls_prob = (
            nn.Sequential(nn.Conv2d(c * s, c // 4, 1), nn.ReLU(inplace=True), nn.Conv2d(c // 4, 1, 3, padding=1))
            if self.quality != "distribution"
            else None
        )
        self.dgqp = DGQP(self.reg_max) if self.quality != "features" else None  # GFLv2's init (std 0.01), shared
        self.reg_offset = (
            nn.Sequential(nn.Conv2d(c * s, c // 4, 1), nn.ReLU(inplace=True), nn.Conv2d(c // 4, 4 * 2, 3, padding=1))
            if self.tap == "faithful"
            else None
        )
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(self.nl))

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
