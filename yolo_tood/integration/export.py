"""Export support for TOOD models: an opset check run by ultralytics' exporter.

The head re-samples its box predictions with ``F.grid_sample``, which ONNX has as ``GridSample`` from opset 16 on.
Without a check, ``opset=13`` would fail deep inside ``torch.onnx.export`` with an unsupported-operator trace, after
the exporter has already started writing. ``on_export_start`` (registered into ultralytics' ``default_callbacks`` by
``yolo_tood.integration.register``) raises one clear line instead, before any export work.

Examples:
    >>> from ultralytics import YOLO
    >>> YOLO("yolov8n-tood.yaml").export(format="onnx", opset=13)  # ValueError: TOOD models need ONNX opset>=16
"""

from __future__ import annotations

from typing import Any

from .compat import ONNX_FORMATS
from .heads import is_tood_head

__all__ = (
    "MIN_ONNX_OPSET",
    "ONNX_FORMATS",
    "check_export_args",
    "on_export_start",
)

MIN_ONNX_OPSET = 16  # ONNX GridSample, used by the head's re-sampling (resample_by_offsets)


def _has_tood_head(model: Any) -> bool:
    """Return True when ``model`` (an ``nn.Module``, possibly wrapped by the exporter) contains a ``TOODDetect``."""
    modules = getattr(model, "modules", None)
    return callable(modules) and any(is_tood_head(m) for m in modules())


def check_export_args(fmt: str, opset: int | None) -> None:
    """Raise a one-line ValueError when a TOOD model is exported through ONNX with an opset below 16.

    Args:
        fmt (str): Ultralytics export format, e.g. ``"onnx"`` or ``"engine"`` (already lower-cased by the exporter).
        opset (int, optional): Requested ONNX opset; None lets the exporter choose its default (>= 17).

    Examples:
        >>> check_export_args("onnx", 17)
        >>> check_export_args("torchscript", 13)  # no ONNX involved
        >>> check_export_args("onnx", 13)  # ValueError: TOOD models need ONNX opset>=16 (GridSample ...), ...
    """
    if fmt not in ONNX_FORMATS:
        return
    effective = 11 if fmt == "hailo" else opset or ONNX_FORMATS[fmt]
    if effective is not None and int(effective) < MIN_ONNX_OPSET:
        how = f"format={fmt} pins opset={effective}" if fmt == "hailo" else f"opset={effective} was requested"
        raise ValueError(
            f"TOOD models need ONNX opset>={MIN_ONNX_OPSET} (GridSample in the head's box re-sampling), but {how}; "
            f"use opset={MIN_ONNX_OPSET} or higher, or omit opset"
        )


def on_export_start(exporter: Any) -> None:
    """Ultralytics ``on_export_start`` callback: reject an ONNX opset a TOOD head cannot be exported with.

    In ultralytics 8.4.190 the exporter runs this callback after it has validated the arguments, fused the model and
    stored it as ``exporter.model``, and before any ``export_*`` method runs, so the error comes before any export work.
    Models without a TOOD head pass through untouched.

    Args:
        exporter (ultralytics.engine.exporter.Exporter): The running exporter; reads ``args.format``, ``args.opset``
            and ``model``.
    """
    args = getattr(exporter, "args", None)
    if args is None or not _has_tood_head(getattr(exporter, "model", None)):
        return
    check_export_args(str(getattr(args, "format", "")).lower(), getattr(args, "opset", None))
