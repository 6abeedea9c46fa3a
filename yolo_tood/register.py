"""The one place where yolo-tood touches ultralytics: registration of the TOOD head, its loss and its callbacks.

Everything ultralytics-version-specific lives here, so a new ultralytics release is a change to this file only.
``register()`` runs once, right after ``ultralytics.nn.tasks`` is imported (see ``yolo_tood._hook``). It never
edits ultralytics' files; it wraps four process-wide entry points:

1. ``tasks.parse_model`` (looked up as a module attribute by ``DetectionModel``): ultralytics resolves YAML names with
   ``globals()[name]`` and gives a head its input channels only when the class is a member of a frozenset built
   *inside* parse_model from the global name ``Detect``; a ``Detect`` subclass is not a member. So for a YAML with a
   ``TOODDetect`` row the wrapper binds the global ``Detect`` to ``TOODDetect`` for the duration of that one call,
   and parse_model builds it with width-scaled channels exactly as it builds ``Detect``.
2. ``DetectionModel.init_criterion``: models whose head is a ``TOODDetect`` get ``TOODLoss``.
3. ``default_callbacks`` (copied into every trainer): tells the head the trainer's epoch, which selects the ATSS
   warm-up or TAL in the loss, also after ``resume=True`` and for the validation losses; logs the zero-size GT
   boxes the loss dropped, once per epoch.
4. ``tasks.yaml_model_load`` (and the name ``ultralytics.engine.model`` imported from it): ultralytics finds the file
   of a scaled name (``yolov8n-tood.yaml`` -> ``yolov8-tood.yaml``) with a regex over the *whole* path string, so a
   directory such as ``/tmp/run1s/`` or ``~/exp2m/`` is rewritten instead of the file name and the YAML is "not
   found". For a TOOD YAML the wrapper applies the same rewrite to the file name only.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
from pathlib import Path
from typing import Any

SUPPORTED_ULTRALYTICS = ">=8.4.190,<8.5"
HEAD_NAMES = frozenset({"TOODDetect"})
_PATCHED = "_yolo_tood_original"  # attribute marking a wrapped ultralytics function, holding the original
_BIND_LOCK = threading.RLock()
_SCALE_IN_NAME = re.compile(r"(\d+)([nslmx])(.+)?$")  # ultralytics' yaml_model_load rewrite, yolov8n-x -> yolov8-x


def check_ultralytics_version(version: str | None = None) -> None:
    """Raise a one-line RuntimeError when ultralytics is outside the range yolo-tood is tested with.

    Args:
        version (str, optional): Version to check; defaults to the installed ``ultralytics.__version__``.
    """
    import ultralytics
    from ultralytics.utils.checks import check_version

    version = version or ultralytics.__version__
    if not check_version(version, SUPPORTED_ULTRALYTICS):
        raise RuntimeError(
            f"yolo-tood supports ultralytics{SUPPORTED_ULTRALYTICS} but ultralytics {version} is installed; "
            f"run: pip install 'ultralytics{SUPPORTED_ULTRALYTICS}'"
        )


def _is_tood_row(row: list) -> bool:
    return len(row) == 4 and row[2] in HEAD_NAMES


def _head_args(args: list, depth: float, width: float, max_channels: float) -> list:
    """Validate a TOODDetect row's ``[nc, feat_channels, stacked_convs]`` and scale width and depth as the model."""
    from ultralytics.utils.ops import make_divisible

    if not isinstance(args, list) or not 1 <= len(args) <= 3:
        raise ValueError(f"TOODDetect YAML args must be [nc, feat_channels, stacked_convs], got {args!r}")
    nc, feat_channels, stacked_convs = (list(args) + [256, 6][len(args) - 1 :])[:3]  # reference defaults 256, 6
    for name, value in (("feat_channels", feat_channels), ("stacked_convs", stacked_convs)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"TOODDetect YAML arg '{name}' must be a positive int, got {value!r}")
    feat_channels = make_divisible(min(feat_channels, max_channels) * width, 8)  # as parse_model scales conv widths
    # As parse_model scales repeats, but at least 2: layer attention over a single layer would be a constant
    stacked_convs = max(round(stacked_convs * depth), min(stacked_convs, 2))
    return [nc, feat_channels, stacked_convs]


def _scaled_copy(d: dict) -> dict:
    """Return a copy of the model dict whose TOOD rows carry scaled head arguments; ``d`` itself is not changed."""
    depth, width, max_channels = d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0), float("inf")
    if scales := d.get("scales"):  # the same scale choice as parse_model makes
        depth, width, max_channels = scales[d.get("scale") or next(iter(scales))]
    rows = d.get("backbone", []) + d.get("head", [])
    if names := {r[2] for r in rows if len(r) == 4 and isinstance(r[2], str) and r[2].endswith("Detect")} - HEAD_NAMES:
        raise ValueError(f"a model YAML with TOODDetect cannot also contain {sorted(names)}")
    head = [[*r[:3], _head_args(r[3], depth, width, max_channels)] if _is_tood_row(r) else r for r in d["head"]]
    return {**d, "head": head}


@contextlib.contextmanager
def _bind(module: Any, name: str, value: Any):
    """Temporarily rebind ``module.name`` to ``value``."""
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def _wrap_parse_model(tasks: Any) -> None:
    original = tasks.parse_model

    def parse_model(d: dict, ch: int, verbose: bool = True):
        """Ultralytics' parse_model, able to build a TOODDetect row (see the module docstring)."""
        if not any(_is_tood_row(r) for r in d.get("head", [])):
            return original(d, ch, verbose)
        check_ultralytics_version()
        from yolo_tood.hyp import TOODHyp

        from .head import TOODDetect

        TOODHyp.from_yaml(d)  # bad hyper-parameters fail at build time, not at the first training step
        with _BIND_LOCK, _bind(tasks, "Detect", TOODDetect):
            return original(_scaled_copy(d), ch, verbose)

    setattr(parse_model, _PATCHED, original)
    tasks.parse_model = parse_model


def _wrap_yaml_model_load(tasks: Any) -> None:
    original = tasks.yaml_model_load

    def yaml_model_load(path):
        """Ultralytics' yaml_model_load, resolving a scaled TOOD name in its own folder (see the module docstring)."""
        path = Path(path)
        unified = path.with_name(_SCALE_IN_NAME.sub(r"\1\3", path.name))
        if path.exists() or unified == path or not unified.exists():
            return original(path)
        d = original(unified)
        if not any(_is_tood_row(r) for r in d.get("head", [])):
            return original(path)  # stock YAMLs keep ultralytics' own behaviour
        d["scale"], d["yaml_file"] = tasks.guess_model_scale(path), str(path)
        return d

    setattr(yaml_model_load, _PATCHED, original)
    tasks.yaml_model_load = yaml_model_load
    engine_model = sys.modules.get("ultralytics.engine.model")  # imported the name before registration, if at all
    if engine_model is not None and getattr(engine_model, "yaml_model_load", None) is original:
        engine_model.yaml_model_load = yaml_model_load


def _wrap_init_criterion(tasks: Any) -> None:
    original = tasks.DetectionModel.init_criterion

    def init_criterion(self):
        """Ultralytics' DetectionModel.init_criterion, returning TOODLoss for models with a TOOD head."""
        from .head import TOODDetect

        if isinstance(self.model[-1], TOODDetect):
            from .loss import TOODLoss

            return TOODLoss(self)
        return original(self)

    setattr(init_criterion, _PATCHED, original)
    tasks.DetectionModel.init_criterion = init_criterion


def _tood_heads(trainer: Any) -> list:
    """Return the TOOD heads of the trainer's model and of its EMA copy (used for the validation losses)."""
    from ultralytics.utils.torch_utils import unwrap_model

    from .head import TOODDetect

    models = [trainer.model, getattr(getattr(trainer, "ema", None), "ema", None)]
    heads = [unwrap_model(m).model[-1] for m in models if m is not None and hasattr(unwrap_model(m), "model")]
    return [h for h in heads if isinstance(h, TOODDetect)]


def on_train_start(trainer: Any) -> None:
    """Check the TOOD settings against the train arguments and say which phase training starts in.

    Warns when the ATSS warm-up is not shorter than the training, and when the stock loss gains (``box``, ``cls``,
    ``dfl``) were changed: they belong to v8DetectionLoss, TOOD's gains are keys of the model YAML.
    """
    if heads := _tood_heads(trainer):
        from ultralytics.cfg import DEFAULT_CFG_DICT
        from ultralytics.utils import LOGGER
        from ultralytics.utils.torch_utils import unwrap_model

        from .hyp import TOODHyp, check_warmup

        hyp = TOODHyp.from_yaml(unwrap_model(trainer.model).yaml)
        check_warmup(hyp, trainer.epochs)
        if changed := {
            k: getattr(trainer.args, k)
            for k in ("box", "cls", "dfl")
            if getattr(trainer.args, k) != DEFAULT_CFG_DICT[k]
        }:
            LOGGER.warning(
                f"TOOD: train arguments {changed} are gains of ultralytics' v8DetectionLoss and do not apply to TOOD "
                "models; set box_gain, cls_gain and dfl_gain in the model YAML instead"
            )
        warmup = f"ATSS for epochs 1-{hyp.atss_epochs}, then TAL" if hyp.atss_epochs else "no ATSS warm-up"
        phase = "ATSS warm-up" if trainer.start_epoch < hyp.atss_epochs else "TAL"
        LOGGER.info(f"TOOD: starting at epoch {trainer.start_epoch + 1} in the {phase} phase ({warmup})")
        for head in heads:
            head.epoch = trainer.start_epoch


def on_train_epoch_start(trainer: Any) -> None:
    """Set the trainer's epoch on the TOOD heads, and log the switch from ATSS to TAL once."""
    if heads := _tood_heads(trainer):
        from ultralytics.utils.torch_utils import unwrap_model

        from .hyp import TOODHyp

        for head in heads:
            head.epoch = trainer.epoch
        atss_epochs = TOODHyp.from_yaml(unwrap_model(trainer.model).yaml).atss_epochs
        if trainer.epoch == atss_epochs and atss_epochs > 0 and trainer.epoch != trainer.start_epoch:
            from ultralytics.utils import LOGGER

            LOGGER.info(f"TOOD: ATSS warm-up done, switching to Task Alignment Learning at epoch {trainer.epoch + 1}")


def on_train_epoch_end(trainer: Any) -> None:
    """Log once how many zero-size GT boxes the TOOD losses dropped during the epoch, and reset the counts.

    The counts of the trained model's loss and of the EMA model's loss (validation losses) are summed; the EMA's
    validation of the previous epoch runs after this callback, so its drops are reported with the next epoch.
    """
    from ultralytics.utils.torch_utils import unwrap_model

    from .loss import TOODLoss

    if not _tood_heads(trainer):
        return
    models = [trainer.model, getattr(getattr(trainer, "ema", None), "ema", None)]
    losses = [getattr(unwrap_model(m), "criterion", None) for m in models if m is not None]
    losses = [c for c in {id(c): c for c in losses}.values() if isinstance(c, TOODLoss)]
    if dropped := sum(c.dropped_boxes for c in losses):
        from ultralytics.utils import LOGGER

        LOGGER.warning(f"TOOD: dropped {dropped} zero-size boxes this epoch")
    for c in losses:
        c.dropped_boxes = 0


def _add_callbacks() -> None:
    from ultralytics.utils.callbacks.base import default_callbacks

    from .export import on_export_start

    for event, fn in (
        ("on_train_start", on_train_start),
        ("on_train_epoch_start", on_train_epoch_start),
        ("on_train_epoch_end", on_train_epoch_end),
        ("on_export_start", on_export_start),
    ):
        if fn not in default_callbacks[event]:
            default_callbacks[event].append(fn)


def _allow_safe_load() -> None:
    """Allow the head's classes under ``ULTRALYTICS_SAFE_LOAD=1`` (``torch.load(weights_only=True)``)."""
    import torch

    from .head import DFLExpectation, Scale, TaskDecomposition, TOODDetect

    torch.serialization.add_safe_globals([TOODDetect, TaskDecomposition, Scale, DFLExpectation])


def register() -> None:
    """Register TOODDetect, its loss and callbacks with ultralytics; idempotent.

    With an unsupported ultralytics, only the parse_model wrapper is installed, so building a TOOD model fails with
    one clear line while stock models keep working.
    """
    import ultralytics.nn.tasks as tasks

    if not hasattr(tasks.parse_model, _PATCHED):
        _wrap_parse_model(tasks)
    try:
        check_ultralytics_version()
    except RuntimeError:
        return
    head = sys.modules.get("yolo_tood.head")
    if head is not None and not hasattr(head, "TOODDetect"):
        return  # yolo_tood.head is mid-import (it imported ultralytics first); it calls register() when done
    from .head import TOODDetect

    if getattr(tasks, "TOODDetect", None) is TOODDetect:
        return
    tasks.TOODDetect = TOODDetect  # parse_model resolves YAML module names with globals()[name]
    _wrap_init_criterion(tasks)
    _wrap_yaml_model_load(tasks)
    _add_callbacks()
    _allow_safe_load()
