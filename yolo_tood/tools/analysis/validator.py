"""The validator runner of the task-alignment analysis: ultralytics' DetectionValidator, also keeping raw predictions.

The statistics themselves are in ``yolo_tood.tools.analysis.alignment``; this module only feeds them from a
validation run (same dataloader, letterboxing, model loading and NMS settings as ``yolo val``).

Examples:
    >>> from yolo_tood.tools.analysis import evaluate_alignment
    >>> result = evaluate_alignment("runs/detect/train/weights/best.pt", "data.yaml", split="val", imgsz=320)
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path
from typing import Any

import torch
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.utils import LOGGER
from ultralytics.utils.ops import xywh2xyxy

from ..compat import prepare_batch
from .alignment import AlignmentAccumulator, AlignmentResult, NMSSettings
from .nms_guard import run_with_batch1_retry

__all__ = ("AlignmentValidator", "evaluate_alignment")


class AlignmentValidator(DetectionValidator):
    """DetectionValidator that also accumulates task-alignment statistics from the raw, pre-NMS predictions.

    ``postprocess`` keeps the raw (B, 4 + nc, A) inference output before the usual NMS, and ``update_metrics`` feeds
    it with the batch's GT boxes (both in letterboxed input pixels) to an ``AlignmentAccumulator``. The normal mAP
    metrics are computed unchanged, with the validator's own ``conf`` (0.001 by default).

    Attributes:
        alignment (AlignmentAccumulator): The accumulated statistics.
        alignment_conf (float): NMS score threshold of the post-NMS counts.

    Examples:
        >>> validator = AlignmentValidator(args=dict(model="best.pt", data="data.yaml", imgsz=320))
        >>> validator(model=YOLO("best.pt").model)
        >>> validator.alignment.result()
    """

    def __init__(self, dataloader=None, save_dir=None, args=None, _callbacks=None, alignment_conf: float = 0.05):
        """Initialise the validator; ``alignment_conf`` is the score threshold of the post-NMS counts."""
        super().__init__(dataloader, save_dir, args, _callbacks)
        self.alignment_conf = alignment_conf
        self.alignment: AlignmentAccumulator | None = None
        self._raw: torch.Tensor | None = None

    def init_metrics(self, model: torch.nn.Module) -> None:
        """Initialise the mAP metrics and a fresh accumulator (after max_det may have been raised by the base)."""
        super().init_metrics(model)
        nms = NMSSettings(
            self.alignment_conf, self.args.iou, self.args.max_det, bool(self.args.single_cls or self.args.agnostic_nms)
        )
        self.alignment = AlignmentAccumulator(nms=nms)

    def postprocess(self, preds: torch.Tensor | list | tuple) -> list[dict[str, torch.Tensor]]:
        """Keep the raw inference output, then apply the usual NMS."""
        raw = preds[0] if isinstance(preds, (list, tuple)) else preds  # eval forward returns (y, preds_dict)
        if self.end2end or raw.ndim != 3 or raw.shape[-1] == 6:
            raise NotImplementedError("task-alignment analysis needs the dense pre-NMS output of an NMS-based head")
        self._raw = raw.float()
        return super().postprocess(preds)

    def update_metrics(self, preds: list[dict[str, torch.Tensor]], batch: dict[str, Any]) -> None:
        """Update mAP metrics and the alignment statistics of each image of the batch."""
        super().update_metrics(preds, batch)
        nc = self._raw.shape[1] - 4
        for si in range(self._raw.shape[0]):
            pbatch = prepare_batch(self, si, batch)  # GT xyxy in input-image pixels, like the raw boxes
            raw = self._raw[si]  # (4 + nc, A)
            self.alignment.update(xywh2xyxy(raw[:4].T), raw[4 : 4 + nc].T, pbatch["bboxes"], pbatch["cls"])


@contextlib.contextmanager
def unbounded_candidates(net: Any):
    """Set ``nms_pre`` of the model's TOOD head to 0 (every candidate) inside the context; restore it after."""
    bounded = [(m, m.nms_pre) for m in net.modules() if getattr(m, "nms_pre", None)] if hasattr(net, "modules") else []
    try:
        for m, _ in bounded:
            m.nms_pre = 0
        yield
    finally:
        for m, k in bounded:
            m.nms_pre = k


def evaluate_alignment(
    model: str | Path | Any,
    data: str | Path,
    split: str = "val",
    imgsz: int = 640,
    batch: int = 16,
    conf: float = 0.05,
    device: str = "cpu",
    save_dir: str | Path | None = None,
    **kwargs: Any,
) -> AlignmentResult:
    """Run a detector over a dataset split and return its task-alignment statistics.

    The dataloader, letterboxing, model loading (``.pt`` or ``.yaml``) and the NMS IoU/max_det settings all come from
    ultralytics' DetectionValidator; only the raw predictions are additionally analysed (see ``AlignmentValidator``).

    Args:
        model (str | Path | YOLO | DetectionModel): Checkpoint or model YAML path, a ``YOLO`` object or a model.
        data (str | Path): Dataset YAML.
        split (str): Dataset split, e.g. ``val`` or ``test``.
        imgsz (int): Inference image size.
        batch (int): Batch size.
        conf (float): NMS score threshold of the post-NMS counts (mAP keeps the validator's 0.001).
        device (str): Device, e.g. ``cpu``.
        save_dir (str | Path, optional): Where the validator may write; a temporary directory by default.
        **kwargs (Any): Further validator arguments, e.g. ``iou=0.6``, ``max_det=100``, ``rect=False``, ``workers=0``.

    Returns:
        (AlignmentResult): Statistics, with the validator's ``metrics/mAP50(B)`` and ``metrics/mAP50-95(B)`` in
            ``metrics``.

    Examples:
        >>> result = evaluate_alignment("best.pt", "bccd.yaml", split="val", imgsz=320)
        >>> result.pcc_top50, result.correct
    """
    yolo, net = _resolve_model(model)
    overrides = dict(yolo.overrides) if yolo is not None else {}
    fixed = dict(data=str(data), split=split, imgsz=imgsz, batch=batch, device=device, mode="val", task="detect")
    args = _validator_args(overrides, kwargs, fixed)
    callbacks = yolo.callbacks if yolo is not None else None  # as Model.val does
    validator = _validate_unbounded(net, args, callbacks, conf, save_dir, batch, split)
    result = validator.alignment.result()
    result.metrics = {k: float(v) for k, v in validator.metrics.results_dict.items()}
    LOGGER.info(
        f"Task alignment ({split}): PCC top-50 {result.pcc_top50:.3f}, IoU top-10 {result.iou_top10:.3f}, "
        f"correct {result.correct}, duplicate {result.duplicate}, error {result.error} "
        f"({result.num_objects} objects, {result.num_images} images)"
    )
    return result


def _resolve_model(model: str | Path | Any) -> tuple[Any | None, Any]:
    """Return the ``YOLO`` object of ``model`` (None for a bare model) and the network to validate."""
    from ultralytics import YOLO

    yolo = model if isinstance(model, YOLO) else YOLO(model) if isinstance(model, (str, Path)) else None
    return yolo, (yolo.model if yolo is not None else model)


def _validator_args(overrides: dict[str, Any], kwargs: dict[str, Any], fixed: dict[str, Any]) -> dict[str, Any]:
    """Merge the validator arguments with Model.val's precedence: model overrides < method defaults < caller ones.

    Args:
        overrides (dict[str, Any]): The ``YOLO`` object's overrides (empty for a bare model).
        kwargs (dict[str, Any]): The caller's further validator arguments.
        fixed (dict[str, Any]): Arguments ``evaluate_alignment`` sets from its own parameters; they win.
    """
    args = {**overrides, "rect": True, "plots": False, "verbose": False}
    args.update(kwargs)
    args.update(fixed)
    return args


def _validate_unbounded(
    net: Any,
    args: dict[str, Any],
    callbacks: dict | None,
    conf: float,
    save_dir: str | Path | None,
    batch: int,
    split: str,
) -> AlignmentValidator:
    """Run an ``AlignmentValidator`` over ``net`` with every pre-NMS candidate, re-run at batch 1 if NMS times out.

    Args:
        net (Any): The network to validate.
        args (dict[str, Any]): Validator arguments (``batch`` is set per run).
        callbacks (dict | None): The ``YOLO`` object's callbacks, as Model.val passes them.
        conf (float): NMS score threshold of the post-NMS counts.
        save_dir (str | Path, optional): Where the validator may write; a temporary directory if None.
        batch (int): Batch size of the first run.
        split (str): Dataset split, for the messages.

    Returns:
        (AlignmentValidator): The validator of the run whose figures hold.
    """

    def run(batch_size: int) -> AlignmentValidator:
        with tempfile.TemporaryDirectory(prefix="alignment_") as tmp:
            validator = AlignmentValidator(
                save_dir=Path(save_dir or tmp), args={**args, "batch": batch_size}, _callbacks=callbacks,
                alignment_conf=conf,
            )  # fmt: skip
            validator(model=net)
        return validator

    # The statistics rank every anchor's raw prediction: the TOOD head's pre-NMS candidate bound is off meanwhile
    with unbounded_candidates(net):
        # Unbounded, NMS can exceed ultralytics' time limit on a busy CPU and silently drop detections (the counts
        # and mAP are then void): re-run one image at a time, as yolo-tood compare's validations do; fail if that
        # hits it too
        validator, hits = run_with_batch1_retry(run, batch, f"alignment run on {split}")
    if hits:
        LOGGER.warning(
            f"Task alignment ({split}): ultralytics' NMS ran out of time {hits}x at batch {batch}, dropping "
            "detections; the figures are those of a re-run at batch 1"
        )
    return validator
