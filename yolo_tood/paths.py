"""Where the package's own files are: imports nothing but ``pathlib``, so reading a path pulls in no head table.

Shared by both houses (registration resolves bare model names here; the demo and the tools read the YAMLs).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ("CFG_DIR",)

# The packaged model YAMLs (yolo_tood/cfg, inside the wheel; the checkout's top-level cfg/ links to them)
CFG_DIR = Path(__file__).resolve().parent / "cfg"
