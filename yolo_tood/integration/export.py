"""Export support for TOOD models: the opset and package checks run by ultralytics' exporter.

The head re-samples its box predictions with ``F.grid_sample``, which ONNX has as ``GridSample`` from opset 16 on.
Without a check, ``opset=13`` would fail deep inside ``torch.onnx.export`` with an unsupported-operator trace, after
the exporter has already started writing. ``on_export_start`` (registered into ultralytics' ``default_callbacks`` by
``yolo_tood.integration.register``) raises one clear line instead, before any export work.

The ONNX packages are the ``export`` extra (``pip install "yolo-tood[export]"``), not a dependency. Without them
ultralytics' ``check_requirements`` tries to pip-install them in the middle of the export, which fails offline with a
long traceback ending in ``No module named 'onnx'``; ``on_export_start`` names the missing ones and the extra first.

Examples:
    >>> from ultralytics import YOLO
    >>> YOLO("yolov8n-tood.yaml").export(format="onnx", opset=13)  # ValueError: TOOD models need ONNX opset>=16
    >>> YOLO("yolov8n-tood.yaml").export(format="onnx")  # without onnx: ModuleNotFoundError: ... yolo-tood[export]
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

from .compat import FORCED_OPSET_FORMATS, ONNX_FORMATS
from .heads import is_tood_head

__all__ = (
    "MIN_ONNX_OPSET",
    "ONNX_FORMATS",
    "check_export_args",
    "check_export_packages",
    "missing_export_packages",
    "on_export_start",
)

MIN_ONNX_OPSET = 16  # ONNX GridSample, used by the head's re-sampling (resample_by_offsets)
SIMPLIFIED_FORMATS = {"saved_model", "pb", "edgetpu"}  # export_saved_model sets simplify=True, whatever was asked
EXPORT_EXTRA = 'pip install "yolo-tood[export]" (or pip install ".[export]" from a clone)'


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
    forced = fmt in FORCED_OPSET_FORMATS
    effective = ONNX_FORMATS[fmt] if forced else opset or ONNX_FORMATS[fmt]
    if effective is not None and int(effective) < MIN_ONNX_OPSET:
        how = f"format={fmt} pins opset={effective}" if forced else f"opset={effective} was requested"
        raise ValueError(
            f"TOOD models need ONNX opset>={MIN_ONNX_OPSET} (GridSample in the head's box re-sampling), but {how}; "
            f"use opset={MIN_ONNX_OPSET} or higher, or omit opset"
        )


def missing_export_packages(fmt: str, simplify: bool = True, quantize: Any = None) -> list[str]:
    """Return the Python packages an ONNX-based export will import and that are not installed, in install order.

    Mirrors the requirements of ultralytics 8.4.190's ``Exporter.export_onnx``: ``onnx`` always, ``onnxruntime`` and
    ``onnxslim`` to simplify the graph (and ``onnxruntime`` for an INT8 ``onnx`` file). Any ``onnxruntime`` build
    (``-gpu``, ``-qnn``, ...) provides the ``onnxruntime`` module, so the import names are what is checked.

    Args:
        fmt (str): Ultralytics export format (lower case).
        simplify (bool): The ``simplify`` export argument.
        quantize (Any): The ``quantize`` export argument (8 for INT8).

    Returns:
        (list[str]): Missing import names, e.g. ``["onnx", "onnxslim"]``; empty for formats without an ONNX step.

    Examples:
        >>> missing_export_packages("torchscript")
        []
    """
    if fmt not in ONNX_FORMATS:
        return []
    simplify = bool(simplify) or fmt in SIMPLIFIED_FORMATS
    needed = ["onnx"] + ["onnxruntime"] * (simplify or (fmt == "onnx" and quantize == 8)) + ["onnxslim"] * simplify
    return [name for name in needed if find_spec(name) is None]


def check_export_packages(fmt: str, simplify: bool = True, quantize: Any = None) -> None:
    """Raise a one-line ModuleNotFoundError naming the ONNX packages an export lacks and the extra that installs them.

    Args:
        fmt (str): Ultralytics export format (lower case).
        simplify (bool): The ``simplify`` export argument.
        quantize (Any): The ``quantize`` export argument.

    Examples:
        >>> check_export_packages("onnx")  # without onnx: ModuleNotFoundError: format=onnx export needs onnx ...
    """
    if missing := missing_export_packages(fmt, simplify, quantize):
        names = " and ".join(", ".join(missing).rsplit(", ", 1))
        verb = "is" if len(missing) == 1 else "are"
        raise ModuleNotFoundError(
            f"format={fmt} export needs {names}, which {verb} not installed; install yolo-tood's export extra: "
            f"{EXPORT_EXTRA}",
            name=missing[0],
        )


def on_export_start(exporter: Any) -> None:
    """Ultralytics ``on_export_start`` callback: reject an ONNX opset or missing ONNX packages for a TOOD model.

    In ultralytics 8.4.190 the exporter runs this callback after it has validated the arguments, fused the model and
    stored it as ``exporter.model``, and before any ``export_*`` method runs, so the error comes before any export work.
    Models without a TOOD head pass through untouched: stock exports keep ultralytics' behaviour, which pip-installs
    missing packages where it can.

    Args:
        exporter (ultralytics.engine.exporter.Exporter): The running exporter; reads ``args.format``, ``args.opset``
            and ``model``.
    """
    args = getattr(exporter, "args", None)
    if args is None or not _has_tood_head(getattr(exporter, "model", None)):
        return
    fmt = str(getattr(args, "format", "")).lower()
    check_export_args(fmt, getattr(args, "opset", None))
    check_export_packages(fmt, getattr(args, "simplify", True), getattr(args, "quantize", None))
