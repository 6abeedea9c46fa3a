"""Inference of a task-aligned head (``TaskAlignedOutputs``): TAP once over the levels, the faithful decode, and
the pre-NMS candidate bound (``keep_topk_scores``)."""

from __future__ import annotations

import torch
import torch.nn as nn
from ultralytics.utils.tal import make_anchors

from ..checks import check_choice, check_int
from .quality import check_quality
from .tap import TAP_MODES, AlignedOutputs, LevelMaps, _fp32, one_kernel_forms, sampling_grid, task_aligned_outputs

# A head's branches by attribute prefix: one-to-many ("") and, on end-to-end models, one-to-one (Detect's "one2one_"
# prefix, which Detect.fuse reads to drop the branch inference does not use)
BRANCH_PREFIXES = ("", "one2one_")


# Candidates per image kept before NMS at inference, over all levels (MMDetection's TOOD: nms_pre=1000 per level, here
# the opt-in nms_pre_mode="level"). See keep_topk_scores.
NMS_PRE = 1000


# Where the pre-NMS bound applies: "image" keeps nms_pre (anchor, class) pairs per image over all levels, "level"
# nms_pre per level as MMDetection's nms_pre (3 levels: 3 * nms_pre per image)
NMS_PRE_MODES = ("image", "level")


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


class TaskAlignedOutputs:
    """Inference of a task-aligned head: boxes decoded with TAP's offsets, scores already probabilities, nms_pre.

    A mixin for ``Detect`` subclasses whose training dict is ``{"boxes", "offsets", "scores", "feats"}`` with
    "scores" the aligned scores (probabilities, not logits): ``TOODDetect`` and ``TAPDetect``. It holds behaviour
    only (no ``nn.Module`` state), so a head that keeps stock ``cv2`` / ``cv3`` children is not shadowed by it; its
    two properties are ``Detect``'s branch dicts, read from the head's ``_branch(prefix)``. The class attributes are
    the ones TOODLoss and yolo-tood's callbacks read.
    """

    # The trainer's current 0-based epoch, which TOODLoss reads for the ATSS warm-up; None outside training. The one
    # piece of trainer state on the module: yolo_tood's callbacks set it each epoch, as MMDetection's SetEpochInfoHook
    # sets TOOD's head.epoch
    epoch: int | None = None
    nms_pre: int = NMS_PRE  # inference candidates before NMS (keep_topk_scores); 0 keeps all
    nms_pre_mode: str = "image"  # NMS_PRE_MODES: nms_pre per image or per level

    @classmethod
    def check_shared_args(cls, tap: str, quality: str, reg_max: int) -> None:
        """Raise one ``ValueError`` line, named after the head class, for a bad argument every task-aligned head takes.

        Args:
            tap (str): TAP's box re-sampling, one of ``TAP_MODES``.
            quality (str): What M reads (``check_quality``; ``distribution`` and ``both`` need DFL, ``reg_max > 1``).
            reg_max (int): DFL bins per side, an int >= 1.
        """
        check_int(reg_max, "reg_max", cls.__name__)
        check_choice(tap, TAP_MODES, "tap", cls.__name__)
        check_quality(quality, reg_max, cls.__name__)

    @classmethod
    def check_levels(cls, nc: int, ch: tuple[int, ...] | list[int]) -> None:
        """Raise one ``ValueError`` line for a bad class count or no input levels (the constructor's own checks)."""
        check_int(nc, "nc", cls.__name__)
        if not ch:
            raise ValueError(f"{cls.__name__}: no input levels; its YAML row needs 'from' levels, e.g. [15, 18, 21]")

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
