"""yolo-tood: TOOD's task-aligned head (T-Head) and Task Alignment Learning for Ultralytics YOLOv8.

Importing this package is cheap: it installs a hook that registers the head with ultralytics when (and only when)
ultralytics' model code is imported. The heavy names below are loaded lazily on first access.

Examples:
    >>> import yolo_tood  # done automatically at start-up by the installed yolo_tood.pth
    >>> from ultralytics import YOLO
    >>> model = YOLO("yolov8n-tood.yaml")  # bare name: the packaged yolo_tood/cfg/yolov8-tood.yaml at scale n
    >>> model.train(data="coco8.yaml", epochs=1, tal_topk=9)  # TOOD keys as train arguments
"""

from __future__ import annotations

from importlib import import_module

from .integration.hook import install as _install

__version__ = "0.1.0"

_LAZY = {
    "TOODDetect": "yolo_tood.nn.head",
    "TaskDecomposition": "yolo_tood.nn.head",
    "aligned_score": "yolo_tood.nn.head",
    "resample_by_offsets": "yolo_tood.nn.head",
    "TOODLoss": "yolo_tood.train.loss",
    "TOODHyp": "yolo_tood.train.hyp",
    "register": "yolo_tood.integration.register",
    "unregister": "yolo_tood.integration.register",
    "check_ultralytics_version": "yolo_tood.integration.register",
}
__all__ = ("__version__", *_LAZY)


def __getattr__(name: str):
    """Import the heavy modules (torch, ultralytics) only when one of their names is used."""
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'yolo_tood' has no attribute '{name}'")


_install()
