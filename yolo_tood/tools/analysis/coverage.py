"""Assignment coverage before training: which ground truths the ATSS warm-up gives no positive, by class and size.

A GT without a positive anchor is not only left unlearned: every anchor on it is a negative, so the model is taught
that the object is background. ``atss_coverage`` runs TOOD's ``ATSSAssigner`` (model-free: it needs only the anchor
points and the GT boxes) over a dataset split as the trainer's dataloader letterboxes it, without augmentation, and
counts the GTs left without a positive, and why:

- ``threshold``: the ATSS threshold (mean + std of the candidates' IoUs) lies above every candidate; with YOLO's 3
  pyramid levels a large GT's candidate IoUs are bimodal and this is common (``ATSSAssigner`` ``min_pos``);
- ``outside``: candidates pass the threshold but none has its centre inside the GT (thin or tiny objects; the
  ``min_size`` floor of the centre test widens those).

The TAL phase depends on the model's predictions; its per-epoch coverage by size is in a run's ``tal_stats.jsonl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ...train.assigner import ATSSAssigner, gt_sizes
from ...train.hyp import TOODHyp
from ...train.tal_stats import SIZE_EDGES, SIZE_LABELS

__all__ = ("Coverage", "atss_coverage", "coverage_table", "level_anchors")


@dataclass
class Coverage:
    """GT counts of one assignment setting, by class and by size bucket.

    Attributes:
        names (list[str]): Class names.
        gts (dict[str, int]): GTs per class name and per size label (the two families share the dict).
        zero (dict[str, int]): GTs without any positive, same keys.
        reasons (dict[str, int]): Zero-positive GTs by reason, ``threshold`` or ``outside`` (see the module doc).
        positives (int): Positive anchors over all GTs.
    """

    names: list[str]
    gts: dict[str, int] = field(default_factory=dict)
    zero: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=lambda: {"threshold": 0, "outside": 0})
    positives: int = 0

    def add(self, key: str, zero: bool) -> None:
        """Count one GT under ``key`` (a class name or a size label)."""
        self.gts[key] = self.gts.get(key, 0) + 1
        self.zero[key] = self.zero.get(key, 0) + int(zero)

    @property
    def total(self) -> int:
        """Number of GTs."""
        return sum(self.gts.get(n, 0) for n in self.names)

    @property
    def total_zero(self) -> int:
        """Number of GTs without a positive."""
        return sum(self.zero.get(n, 0) for n in self.names)

    def share(self, key: str | None = None) -> float | None:
        """Return the zero-positive share of ``key`` (all GTs if None), None if there is no such GT."""
        gts, zero = (self.total, self.total_zero) if key is None else (self.gts.get(key, 0), self.zero.get(key, 0))
        return zero / gts if gts else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary."""
        keys = [*self.names, *SIZE_LABELS]
        return {
            "gts": self.total,
            "zero_pos": self.total_zero,
            "zero_pos_share": self.share(),
            "pos_per_gt": self.positives / self.total if self.total else None,
            "reasons": dict(self.reasons),
            "by_key": {k: {"gts": self.gts.get(k, 0), "zero_pos": self.zero.get(k, 0)} for k in keys},
        }


def level_anchors(imgsz: int, strides: tuple[int, ...] = (8, 16, 32)) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the anchor points (A, 2) in pixels and their strides (A, 1) of a square ``imgsz`` input.

    The same points as ultralytics' ``make_anchors(feats, strides, 0.5) * stride``, level by level.
    """
    points, stride_col = [], []
    for s in strides:
        n = imgsz // s
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        points.append((torch.stack((xs.flatten(), ys.flatten()), 1).float() + 0.5) * s)
        stride_col.append(torch.full((n * n, 1), float(s)))
    return torch.cat(points), torch.cat(stride_col)


def _zero_reason(assigner: ATSSAssigner, gt: torch.Tensor, layout: tuple) -> str:
    """Return why ``gt`` (4,) got no positive from ``assigner``: ``threshold`` or ``outside``.

    ``layout`` is ``assigner.anchor_layout(...)``; the threshold is the reference's mean + std (before ``min_pos``).
    """
    _, iou, thr = assigner.candidates(gt[None], *layout)
    return "outside" if bool((iou >= thr[:, None]).any()) else "threshold"


def atss_coverage(
    data: str | Path,
    imgsz: int = 320,
    split: str = "train",
    topk: int = TOODHyp.atss_topk,
    min_size: float = TOODHyp.tal_min_size,
    min_pos: int = TOODHyp.atss_min_pos,
    strides: tuple[int, ...] = (8, 16, 32),
    batch: int = 16,
) -> Coverage:
    """Run TOOD's ATSS assigner over a dataset split and count the GTs left without a positive.

    Images are letterboxed to a square ``imgsz`` by ultralytics' own dataset (no augmentation, no mosaic), so the
    boxes are those the warm-up would see before augmentation.

    Args:
        data (str | Path): Detection dataset YAML.
        imgsz (int): Training image size.
        split (str): Dataset split.
        topk (int): ATSS candidates per level (the ``atss_topk`` key).
        min_size (float): Floor of the centre-in-GT test (the ``tal_min_size`` key).
        min_pos (int): Positives every GT keeps at least (the ``atss_min_pos`` key).
        strides (tuple[int, ...]): Strides of the pyramid levels (YOLOv8/YOLO11: 8, 16, 32).
        batch (int): Images per dataloader batch.

    Returns:
        (Coverage): Counts by class and size, and the reasons of the zero-positive GTs.

    Examples:
        >>> cov = atss_coverage("road_traffic.yaml", imgsz=320)
        >>> cov.share(), cov.share("crosswalks"), cov.reasons
    """
    loader, names = _letterboxed_loader(data, imgsz, split, max(strides), batch)
    assigner = ATSSAssigner(topk, min_size=min_size, min_pos=min_pos)
    anc, stride_col = level_anchors(imgsz, strides)
    layout = assigner.anchor_layout(anc, stride_col)  # for the reasons of the zero-positive GTs
    cov = Coverage(names)
    for b in loader:
        h, w = b["img"].shape[2:]
        if (h, w) != (imgsz, imgsz):
            raise ValueError(f"expected {imgsz}x{imgsz} letterboxed images, got {h}x{w}")
        for i in range(b["img"].shape[0]):
            sel = b["batch_idx"] == i
            if bool(sel.any()):
                gts, cls = _image_gts(b, sel, imgsz)
                _count_image(cov, assigner, anc, stride_col, layout, gts, cls)
    return cov


def _letterboxed_loader(data: str | Path, imgsz: int, split: str, stride: int, batch: int) -> tuple[Any, list[str]]:
    """Return ultralytics' val-mode dataloader of a split (square letterbox, no augmentation) and the class names.

    Args:
        data (str | Path): Detection dataset YAML.
        imgsz (int): Image size.
        split (str): Dataset split.
        stride (int): Largest stride of the model.
        batch (int): Images per batch.
    """
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(str(data))
    cfg = get_cfg(overrides={"imgsz": imgsz, "rect": False, "workers": 0, "task": "detect"})
    dataset = build_yolo_dataset(cfg, info[split], batch, info, mode="val", rect=False, stride=stride)
    loader = build_dataloader(dataset, batch, workers=0, shuffle=False)
    return loader, [info["names"][i] for i in sorted(info["names"])]


def _image_gts(b: dict[str, Any], sel: torch.Tensor, imgsz: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the GT boxes (n, 4) as xyxy input pixels and their classes (n,) of the image selected by ``sel``."""
    xywh = b["bboxes"][sel].float() * imgsz
    gts = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
    return gts, b["cls"][sel].view(-1).long()


def _count_image(
    cov: Coverage,
    assigner: ATSSAssigner,
    anc: torch.Tensor,
    stride_col: torch.Tensor,
    layout: tuple,
    gts: torch.Tensor,
    cls: torch.Tensor,
) -> None:
    """Assign one image's GTs and add them to ``cov``, by class and size, with the reasons of the zero-positive ones.

    Args:
        cov (Coverage): Counts to update.
        assigner (ATSSAssigner): The assigner.
        anc (torch.Tensor): Anchor points (A, 2) in pixels.
        stride_col (torch.Tensor): Their strides (A, 1).
        layout (tuple): ``assigner.anchor_layout(anc, stride_col)``.
        gts (torch.Tensor): GT boxes (n, 4), xyxy pixels.
        cls (torch.Tensor): GT classes (n,).
    """
    nc = len(cov.names)
    res = assigner(anc, stride_col, cls[None, :, None].float(), gts[None], torch.ones(1, len(gts), 1), nc)
    pos = torch.bincount(res.gt_idx[res.fg_mask], minlength=len(gts))  # (n,)
    cov.positives += int(pos.sum())
    buckets = torch.bucketize(gt_sizes(gts), torch.tensor(SIZE_EDGES), right=True)
    for j in range(len(gts)):
        zero = bool(pos[j] == 0)
        cov.add(cov.names[cls[j]], zero)
        cov.add(SIZE_LABELS[buckets[j]], zero)
        if zero:
            cov.reasons[_zero_reason(assigner, gts[j], layout)] += 1


def coverage_table(results: dict[str, Coverage]) -> str:
    """Markdown table: zero-positive share of every class and size bucket, one column per setting."""
    first = next(iter(results.values()))
    head = "| GTs | count | " + " | ".join(results) + " |"
    rows = [head, "|" + "---|" * (len(results) + 2)]

    def cell(c: Coverage, key: str | None) -> str:
        s = c.share(key)
        n = c.total_zero if key is None else c.zero.get(key, 0)
        return "-" if s is None else f"{s:.1%} ({n})"

    for key, label in [(None, "all"), *((n, n) for n in first.names), *((s, f"{s} px") for s in SIZE_LABELS)]:
        count = first.total if key is None else first.gts.get(key, 0)
        rows.append(f"| {label} | {count} | " + " | ".join(cell(c, key) for c in results.values()) + " |")
    rows.append(
        "| positives per GT | | " + " | ".join(f"{c.positives / max(c.total, 1):.1f}" for c in results.values()) + " |"
    )
    reasons = (f"{c.reasons['threshold']} / {c.reasons['outside']}" for c in results.values())
    rows.append("| zero: threshold / outside | | " + " | ".join(reasons) + " |")
    return "\n".join(rows)
