"""Lazy start-up hook: run ``yolo_tood.register()`` right after ultralytics imports ``ultralytics.nn.tasks``.

Installed into every interpreter by ``yolo_tood.pth`` (so the stock ``yolo`` command needs no extra import), it
must stay cheap: it imports only ``sys`` (about 2 ms per interpreter start for the package), and a process that
never imports ultralytics never imports torch or ultralytics because of it.
"""

from __future__ import annotations

import sys

TARGET = "ultralytics.nn.tasks"


class _RegisteringLoader:
    """Delegate to the real loader, then register yolo-tood with the freshly executed module."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        from yolo_tood.integration.register import register

        register()


class _UltralyticsFinder:
    """A meta-path finder that only intercepts ``ultralytics.nn.tasks`` and defers finding to the other finders."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Install the finder once, or register at once if ultralytics' tasks module is already imported."""
    if TARGET in sys.modules:
        from yolo_tood.integration.register import register

        register()
    elif not any(isinstance(f, _UltralyticsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _UltralyticsFinder())
