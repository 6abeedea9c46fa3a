"""Lazy start-up hook: import-time actions, so that no yolo-tood module has to import the registration itself.

Installed into every interpreter by ``yolo_tood.pth`` (so the stock ``yolo`` command needs no extra import), it
must stay cheap: it imports only ``sys`` (about 2 ms per interpreter start for the package), and a
process that never imports ultralytics never imports torch or ultralytics because of it. One meta-path finder:

- right after ``ultralytics.utils`` executes, it adds the TOOD hyper-parameters to ultralytics' default cfg
  (``register.add_train_args``), before the ``yolo`` command or ``get_cfg`` checks any train argument against it;
- right after ``ultralytics.nn.tasks`` executes, it runs ``yolo_tood.register()``;
- right after a head module (``yolo_tood.nn.head``) executes, it allows the head's classes for safe loading, so
  unpickling a checkpoint registers what it needs in a fresh process whichever of the two is imported first; after
  any module of ``yolo_tood.nn`` it imports the head modules that registration had to leave while that one executed;
- it serves the module paths before the layer folders (``OLD_MODULES``), which
  checkpoints pickled then name, as thin modules re-exporting the new ones.
"""

from __future__ import annotations

import sys

TARGET = "ultralytics.nn.tasks"
CFG_TARGET = "ultralytics.utils"  # defines DEFAULT_CFG_DICT, the train arguments ultralytics accepts
# The head modules live here; which ones they are is the head table's (heads.HEADS), read once one of these executes,
# so that the hook imports nothing at start-up
HEAD_PACKAGE = "yolo_tood.nn."
# The plug-in's module paths before the layer folders; checkpoints pickled then name their classes through them. (The
# tools' old path, yolo_tood.diagnostics, is their own module: the plug-in names no module of the tools.)
OLD_MODULES = {
    "yolo_tood.head": "yolo_tood.nn.head",
    "yolo_tood.loss": "yolo_tood.train.loss",
    "yolo_tood.assigner": "yolo_tood.train.assigner",
    "yolo_tood.hyp": "yolo_tood.train.hyp",
    "yolo_tood.export": "yolo_tood.integration.export",
}


def allow_safe_load(module) -> None:
    """Allow a head module's classes under ``ULTRALYTICS_SAFE_LOAD=1`` (``torch.load(weights_only=True)``).

    Run right after a head module executes, whatever imported it. The classes are also allowed under their module
    paths before the layer folders, which old checkpoints name. Torch's allow-list then admits only these classes, so
    ``unregister()`` leaves it alone.

    Args:
        module (module): The executed head module; its ``nn.Module`` classes in ``__all__`` are allowed.
    """
    import torch

    classes = [getattr(module, n) for n in getattr(module, "__all__", ())]
    classes = [c for c in classes if isinstance(c, type) and issubclass(c, torch.nn.Module)]
    old = [old for old, new in OLD_MODULES.items() if new == module.__name__]
    # a module that re-exports classes (nn/head.py since nn/ was split) is the path older checkpoints name them by
    old += [module.__name__] if any(c.__module__ != module.__name__ for c in classes) else []
    if not hasattr(torch.serialization, "get_unsafe_globals_in_checkpoint"):
        old = []  # torch < 2.6 has no (class, "module.Name") aliases, and ultralytics no restricted loading
    torch.serialization.add_safe_globals(classes + [(c, f"{o}.{c.__qualname__}") for o in old for c in classes])


def head_modules() -> set[str]:
    """The modules of the head table's classes (``heads.HEADS``)."""
    from yolo_tood.integration.heads import HEADS

    return {spec.module for spec in HEADS}


def _after_exec(name: str, module) -> None:
    if name == TARGET:
        from yolo_tood.integration.register import register

        register()
    elif name == CFG_TARGET:
        from yolo_tood.integration.register import add_train_args

        add_train_args()
    elif name.startswith(HEAD_PACKAGE):
        if name in head_modules():
            allow_safe_load(module)
        if TARGET in sys.modules and "yolo_tood.integration.register" in sys.modules:
            from yolo_tood.integration.register import import_head_modules

            import_head_modules(name)  # those register() could not import while this one was executing


class _RegisteringLoader:
    """Delegate to the real loader, then run the after-import action of the freshly executed module."""

    def __init__(self, loader, name: str):
        self._loader = loader
        self._name = name

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _after_exec(self._name, module)


class _AliasLoader:
    """Load an old module path as a thin module re-exporting the module it moved to."""

    def __init__(self, target: str):
        self._target = target

    def create_module(self, spec):
        return None  # a plain module

    def exec_module(self, module) -> None:
        from importlib import import_module

        target = import_module(self._target)
        names = getattr(target, "__all__", None) or [n for n in vars(target) if not n.startswith("_")]
        module.__dict__.update({n: getattr(target, n) for n in names}, __all__=tuple(names))
        module.__doc__ = f"Old path of ``{self._target}``, kept so that checkpoints pickled before the move load."
        module.__getattr__ = lambda name: getattr(target, name)  # the rest (private names) from the real module


class _UltralyticsFinder:
    """A meta-path finder for the modules above; every other import is left to the other finders."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in OLD_MODULES:
            from importlib.machinery import ModuleSpec

            return ModuleSpec(fullname, _AliasLoader(OLD_MODULES[fullname]))
        if fullname not in (TARGET, CFG_TARGET) and not fullname.startswith(HEAD_PACKAGE):
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader, fullname)
                return spec
        return None


def install() -> None:
    """Install the finder once; act at once for ultralytics modules that are already imported."""
    if not any(isinstance(f, _UltralyticsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _UltralyticsFinder())
    if CFG_TARGET in sys.modules and TARGET not in sys.modules:
        from yolo_tood.integration.register import add_train_args

        add_train_args()
    if TARGET in sys.modules:
        from yolo_tood.integration.register import register

        register()
