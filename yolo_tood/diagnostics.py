"""Old path of ``yolo_tood.tools.analysis`` (the module before the layer folders), kept for old imports and pickles.

It belongs to the tools, as what it re-exports: the plug-in never imports it (``tests/test_layers.py``). The tools
serve their old path themselves, so the plug-in's start-up hook, which serves the plug-in's old paths, names none of
their modules.
"""

from __future__ import annotations

from .tools import analysis as _analysis
from .tools.analysis import *  # noqa: F403  the names older code imported from here

__all__ = _analysis.__all__


def __getattr__(name: str):
    """Serve the rest (private names) from the real package, as the old module had them."""
    return getattr(_analysis, name)
