"""Registration of the TOOD heads, their losses and callbacks with ultralytics, and its exact undo.

``register()`` runs right after ``ultralytics.nn.tasks`` is imported (see ``yolo_tood.integration.hook``); it never
edits ultralytics' files, and ``unregister()`` restores everything it changed. The ultralytics internals involved are
listed in ``yolo_tood.integration.compat``; the heads in ``yolo_tood.integration.heads``. It wraps:

1. ``tasks.parse_model``: for a YAML with a TOOD head row, ultralytics' own parse_model runs on a private copy of its
   globals in which ``Detect`` is the TOOD head (``compat.parse_model_with``), so the head gets width-scaled channels
   exactly as ``Detect``; the ``ultralytics.nn.tasks`` module itself is never rebound, so a stock model built by
   another thread at the same time gets a stock head.
2. ``DetectionModel.init_criterion``: models whose head is a TOOD head get that head's criterion.
3. ``default_callbacks`` (copied into every trainer): tells the head the trainer's epoch, which selects the ATSS
   warm-up or TAL in the loss, also after ``resume=True`` and for the validation losses; checks the TOOD train
   arguments (bad values; set for a model without a TOOD head).
4. ``tasks.yaml_model_load`` (and the name ``ultralytics.engine.model`` imported from it), for TOOD names only:
   - a bare name of a shipped config (``yolov8n-tood.yaml``, ``yolo11x-tood.yaml``) resolves to the packaged YAML
     in ``CFG_DIR`` (``yolo_tood/cfg``) from any working directory, as ``yolov8n.yaml`` resolves to ultralytics'
     ``cfg/models``; a file of that name in the working directory still wins, as it does for stock names;
   - ultralytics finds the file of a scaled name (``yolov8n-tood.yaml`` -> ``yolov8-tood.yaml``) with a regex over
     the *whole* path string, so a directory such as ``/tmp/run1s/`` or ``~/exp2m/`` is rewritten instead of the file
     name and the YAML is "not found"; for a TOOD YAML the wrapper applies the same rewrite to the file name only;
   - a TOOD-looking name that resolves to nothing fails with one line naming what was typed and the shipped configs
     (ultralytics would name the unscaled file, which the user never typed);
   - a name that ultralytics does not find either and that is a small edit away from exactly one shipped name
     (``yolov8n-tod.yaml``, ``yolov8n_tood.yaml``) fails with one line asking "did you mean yolov8n-tood.yaml?".
   Stock names go to ultralytics' own function unchanged, and its own error stays for a stock typo (``yolov8m.yml``).
5. ``ultralytics.cfg.check_cfg`` (which ``get_cfg`` calls on every merged cfg, in ``BaseTrainer.__init__`` before the
   run folder is made): after ultralytics' own checks, the TOOD train arguments and, for a train cfg whose model is a
   TOOD model YAML, its hyper-parameters and head row (``check_tood_cfg``), so a bad value stops with one line and
   leaves no ``runs/.../NAME`` behind, as ultralytics' own bad values do.

Separately, the TOOD hyper-parameters (``hyp_schema()``) become train arguments: ``add_train_args()`` adds them, with
the default None (= the model YAML's value), to ultralytics' ``DEFAULT_CFG_DICT`` / ``DEFAULT_CFG``, against which the
``yolo`` command and ``get_cfg`` check every train argument. The start-up hook calls it right after
``ultralytics.utils`` executes, before either check can run; ``unregister()`` removes the keys again.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..checks import check_int
from ..paths import CFG_DIR
from .compat import (
    PARSE_MODEL_REG_MAX,
    SCALE_IN_NAME,
    SUPPORTED_ULTRALYTICS,
    check_ultralytics_version,
    parse_model_with,
)
from .heads import HEADS, is_tood_head, tood_row_spec

__all__ = (
    "SUPPORTED_ULTRALYTICS",
    "add_train_args",
    "check_tood_cfg",
    "check_ultralytics_version",
    "is_registered",
    "register",
    "shipped_configs",
    "unregister",
)

_PATCHED = "_yolo_tood_original"  # attribute marking a wrapped ultralytics function, holding the original
_MISSING = object()
# Largest edit distance (insertions, deletions, substitutions) of a mistyped model name from a shipped one that gets
# "did you mean": 2 catches a dropped or doubled letter and '_' for '-' (yolov8n-tod, yolo11n-tapp, yolov8n_tood),
# while stock names stay 3 or more away from every shipped one (yolov8n-p2, -obb, -cls, -seg, -pose vs -tap, -tood)
NEAR_MISS_DISTANCE = 2
_SCALE_SLOT = re.compile(r"(\d+)(?=-)")  # where a scale letter goes in a packaged name: yolov8-tood -> yolov8n-tood


@dataclass
class _Patch:
    """One ultralytics attribute replaced by a wrapper: enough to put the original back."""

    owner: Any
    name: str
    original: Any  # the value in owner.__dict__ before, or _MISSING when it was inherited
    wrapper: Any


_PATCHES: list[_Patch] = []
_CALLBACKS: list[tuple[str, Callable]] = []
_TRAIN_ARGS: list[str] = []  # keys add_train_args() added to ultralytics' default cfg


def _patch(owner: Any, name: str, make_wrapper: Callable[[Any], Any]) -> None:
    """Replace ``owner.name`` by ``make_wrapper(current value)`` and remember how to undo it."""
    current = getattr(owner, name)
    wrapper = make_wrapper(current)
    setattr(wrapper, _PATCHED, current)
    _PATCHES.append(_Patch(owner, name, vars(owner).get(name, _MISSING), wrapper))
    setattr(owner, name, wrapper)


def _is_tood_row(row: list) -> bool:
    return tood_row_spec(row) is not None


def _head_args(spec: Any, args: list, depth: float, width: float, max_channels: float) -> list:
    """Validate a TOOD head row's ``[nc, *spec.yaml_args]`` and scale width and depth as parse_model scales the model.

    For a ``scaled`` head the first argument after ``nc`` is a width (scaled like a conv width), the second a depth
    (scaled like repeats); the others are passed as written and checked by the head (``HeadSpec.yaml_args`` names
    them all).
    """
    from ultralytics.utils.ops import make_divisible

    names, defaults = spec.yaml_args, list(spec.arg_defaults().values())
    if not isinstance(args, list) or not 1 <= len(args) <= 1 + len(names):
        raise ValueError(f"{spec.name} YAML args must be [nc, {', '.join(names)}], got {args!r}")
    full = (list(args) + list(defaults)[len(args) - 1 :])[: 1 + len(names)]
    if not spec.scaled:
        return full
    nc, feat_channels, stacked_convs, *rest = full
    for name, value in zip(names, (feat_channels, stacked_convs)):
        check_int(value, name, f"{spec.name} YAML arg")
    feat_channels = make_divisible(min(feat_channels, max_channels) * width, 8)  # as parse_model scales conv widths
    # As parse_model scales repeats, but at least 2: layer attention over a single layer would be a constant
    stacked_convs = max(round(stacked_convs * depth), min(stacked_convs, 2))
    return [nc, feat_channels, stacked_convs, *rest]


def _scaled_copy(d: dict) -> tuple[dict, Any]:
    """Return a copy of the model dict whose TOOD rows carry scaled head arguments, and the head's spec.

    ``d`` itself is not changed.
    """
    depth, width, max_channels = d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0), float("inf")
    if scales := d.get("scales"):  # the same scale choice as parse_model makes
        depth, width, max_channels = scales[d.get("scale") or next(iter(scales))]
    rows = d.get("backbone", []) + d.get("head", [])
    specs = {tood_row_spec(r) for r in d["head"]} - {None}
    if len(specs) > 1:
        raise ValueError(f"a model YAML can contain one kind of TOOD head, got {sorted(s.name for s in specs)}")
    (spec,) = specs
    others = {r[2] for r in rows if len(r) == 4 and isinstance(r[2], str) and r[2].endswith(spec.stands_for)}
    if names := others - {spec.name}:
        raise ValueError(f"a model YAML with {spec.name} cannot also contain {sorted(names)}")
    head = [[*r[:3], _head_args(spec, r[3], depth, width, max_channels)] if _is_tood_row(r) else r for r in d["head"]]
    return {**d, "head": head}, spec


def _wrap_parse_model(original: Callable) -> Callable:
    def parse_model(d: dict, ch: int, verbose: bool = True):
        """Ultralytics' parse_model, able to build a TOOD head row (see the module docstring)."""
        if not any(_is_tood_row(r) for r in d.get("head", [])):
            return original(d, ch, verbose)
        check_ultralytics_version()
        from ..train.hyp import TOODHyp

        TOODHyp.from_yaml(d)  # bad hyper-parameters fail at build time, not at the first training step
        scaled, spec = _scaled_copy(d)
        head = spec.cls
        return parse_model_with(original, {spec.stands_for: head, spec.name: head})(scaled, ch, verbose)

    return parse_model


def _looks_tood(path: Path) -> bool:
    """True for a YAML name meant for yolo-tood (``*tood*.yaml``, ``*-tap.yaml``); others go to ultralytics as is."""
    stem = path.stem.lower()
    return path.suffix in (".yaml", ".yml") and ("tood" in stem or re.search(r"-tap(\b|_)", stem) is not None)


def _shipped_config(path: Path, unified: Path) -> Path | None:
    """Return the packaged YAML of a bare name (``yolov8n-tood.yaml`` -> ``CFG_DIR/yolov8-tood.yaml``), else None."""
    if path.parent != Path("."):
        return None  # a path names a file of the user's, as for stock names
    for name in (path.name, unified.name):
        if (CFG_DIR / name).is_file():
            return CFG_DIR / name
    return None


def shipped_configs() -> list[str]:
    """Return the bare names of the packaged configs, one entry per family, e.g. ``yolov8{n,s,m,l,x}-tood.yaml``."""
    import yaml

    names = []
    for f in sorted(CFG_DIR.glob("*.yaml")):
        scales = list((yaml.safe_load(f.read_text()) or {}).get("scales") or ())
        letters = "{" + ",".join(scales) + "}" if scales else ""
        names.append(_SCALE_SLOT.sub(rf"\g<1>{letters}", f.stem, count=1) + f.suffix)
    return names


def shipped_names() -> list[str]:
    """Return every bare name that resolves to a packaged config: each file's name and its scaled names.

    Examples:
        >>> "yolov8n-tood.yaml" in shipped_names() and "yolov8-tood.yaml" in shipped_names()
        True
    """
    import yaml

    names = []
    for f in sorted(CFG_DIR.glob("*.yaml")):
        scales = (yaml.safe_load(f.read_text()) or {}).get("scales") or ()
        names += [f.name] + [_SCALE_SLOT.sub(rf"\g<1>{s}", f.name, count=1) for s in scales]
    return names


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning ``a`` into ``b``."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def near_miss(path: str | Path) -> str | None:
    """Return the one shipped name within ``NEAR_MISS_DISTANCE`` edits of ``path``'s file name, else None.

    None as well when several shipped names are equally near (``yolov8q-tood.yaml``: any scale letter), so the hint
    never guesses between them; only ``.yaml`` / ``.yml`` names are compared.

    Examples:
        >>> near_miss("yolov8n-tod.yaml"), near_miss("yolov8m.yml")
        ('yolov8n-tood.yaml', None)
    """
    name = Path(path).name.lower()
    if Path(name).suffix not in (".yaml", ".yml"):
        return None
    distances = {shipped: _edit_distance(name, shipped) for shipped in shipped_names()}
    best = min(distances.values())
    nearest = [shipped for shipped, d in distances.items() if d == best]
    return nearest[0] if best <= NEAR_MISS_DISTANCE and len(nearest) == 1 else None


def _not_found(path: Path) -> FileNotFoundError:
    """The one-line error of a TOOD-looking or near-miss model name that resolves to nothing.

    The one shipped name it is a near miss of when there is one, else the list of shipped configs.
    """
    if guess := near_miss(path):
        return FileNotFoundError(f"yolo-tood: model config '{path}' does not exist; did you mean {guess}?")
    return FileNotFoundError(
        f"yolo-tood: model config '{path}' does not exist; the shipped ones are {', '.join(shipped_configs())} "
        f"(by bare name, from {CFG_DIR}), or give the path of your own model YAML"
    )


def _wrap_yaml_model_load(tasks: Any) -> Callable[[Callable], Callable]:
    def make(original: Callable) -> Callable:
        def tood_dict(d: dict, path: Path) -> dict:
            """``d`` loaded from another file, with the scale and file name of ``path`` as ultralytics records them."""
            d["scale"], d["yaml_file"] = tasks.guess_model_scale(path), str(path)
            return d

        def yaml_model_load(path):
            """Ultralytics' yaml_model_load, resolving TOOD names (see the module docstring, point 4)."""
            path = Path(path)
            unified = path.with_name(SCALE_IN_NAME.sub(r"\1\3", path.name))
            if path.exists():
                return original(path)
            if unified != path and unified.exists():  # the unscaled file next to the scaled name
                d = original(unified)
                if not any(_is_tood_row(r) for r in d.get("head", [])):
                    return original(path)  # stock YAMLs keep ultralytics' own behaviour
                return tood_dict(d, path)
            if not _looks_tood(path):
                try:
                    return original(path)
                except FileNotFoundError:
                    if near_miss(path) is None:
                        raise  # a stock name, or a typo of one: ultralytics' own error
                    raise _not_found(path) from None
            if shipped := _shipped_config(path, unified):
                return tood_dict(original(shipped), path)
            try:
                return original(path)  # ultralytics' own search (its package folders) as a last resort
            except FileNotFoundError:
                raise _not_found(path) from None

        return yaml_model_load

    return make


def _wrap_init_criterion(original: Callable) -> Callable:
    def init_criterion(self):
        """Ultralytics' DetectionModel.init_criterion, returning the TOOD criterion for models with a TOOD head."""
        spec = is_tood_head(self.model[-1])
        return spec.criterion_for(self) if spec is not None else original(self)

    return init_criterion


def _tood_model_yaml(cfg: dict) -> dict | None:
    """Return the model YAML dict of a train cfg whose ``model`` is a model YAML with a TOOD head row, else None.

    A checkpoint (``.pt``), a resumed run or another mode gives None: their model is checked where it is loaded. A YAML
    that does not load is left to ultralytics' own error later, unless it is a TOOD or near-miss name, whose one line
    is better now than after the run folder exists.
    """
    model = cfg.get("model")
    if cfg.get("mode") != "train" or cfg.get("resume") or not str(model or "").endswith((".yaml", ".yml")):
        return None
    from ultralytics.nn.tasks import yaml_model_load

    try:
        d = yaml_model_load(model)
    except Exception:  # missing, unreadable, not YAML: ultralytics reports it when it builds the model, as always
        if _looks_tood(Path(model)) or near_miss(model) is not None:
            raise
        return None
    return d if any(_is_tood_row(r) for r in d.get("head") or []) else None


def check_tood_cfg(cfg: dict) -> None:
    """Check the TOOD train arguments of a merged cfg and, for a TOOD model YAML, its TOOD keys and head row.

    Runs inside ultralytics' ``check_cfg`` (see the module docstring, point 5), so in the trainer before the run folder
    exists. Builds no model: the head row goes through ``_head_args`` (ints, scaled as ``parse_model`` scales them)
    and the head's own ``check_args``, the TOOD keys through ``TOODHyp`` (the YAML's merged with the train arguments,
    which also checks rules across keys such as ``tal_topk_min <= tal_topk_max``).

    Args:
        cfg (dict): The merged train arguments, as ``check_cfg`` gets them.

    Raises:
        ValueError: One line naming the first bad key or head argument, its value and what is allowed.
    """
    from ..train.hyp import TOODHyp, train_overrides

    train_overrides(cfg)  # every TOOD key alone, whatever the model (a stock model's are refused at train start)
    if (d := _tood_model_yaml(cfg)) is None:
        return
    TOODHyp.from_yaml(d, cfg)
    scaled, spec = _scaled_copy(d)
    for row in scaled["head"]:
        if _is_tood_row(row):
            spec.check_args(row[3], d.get("reg_max", PARSE_MODEL_REG_MAX))


def _wrap_check_cfg(original: Callable) -> Callable:
    def check_cfg(cfg: dict, hard: bool = True) -> None:
        """Ultralytics' check_cfg, then the TOOD train arguments and head row (``check_tood_cfg``)."""
        original(cfg, hard)
        check_tood_cfg(cfg)

    return check_cfg


def _add_callbacks() -> None:
    from ultralytics.utils.callbacks.base import default_callbacks

    from .callbacks import (
        on_pretrain_routine_start,
        on_train_epoch_end,
        on_train_epoch_start,
        on_train_start,
    )
    from .export import on_export_start

    for event, fn in (
        ("on_pretrain_routine_start", on_pretrain_routine_start),  # TOOD train arguments' values, early
        ("on_train_start", on_train_start),
        ("on_train_epoch_start", on_train_epoch_start),
        ("on_train_epoch_end", on_train_epoch_end),  # tal_stats.jsonl, before the epoch's validation
        ("on_export_start", on_export_start),
    ):
        if fn not in default_callbacks[event]:
            default_callbacks[event].append(fn)
            _CALLBACKS.append((event, fn))


def add_train_args() -> None:
    """Add the TOOD hyper-parameters to ultralytics' default cfg as train arguments (default None); idempotent.

    Ultralytics checks every train argument against ``DEFAULT_CFG_DICT`` (the ``yolo`` command before it imports any
    model code, ``get_cfg`` again in the trainer), and the trainer builds its arguments from ``DEFAULT_CFG``. The
    value None means "the model YAML's value"; the trainer saves every key in ``args.yaml`` and ``resume`` restores
    it. The TOOD criterion and callbacks merge the non-None ones over the model YAML (``TOODHyp.from_yaml``).
    """
    import ultralytics.utils as ul

    from ..train.hyp import hyp_schema

    for key in hyp_schema():
        if key.name in ul.DEFAULT_CFG_DICT:
            continue  # ours already, or (a future) ultralytics' own key: never shadow it
        ul.DEFAULT_CFG_DICT[key.name] = None
        setattr(ul.DEFAULT_CFG, key.name, None)
        _TRAIN_ARGS.append(key.name)


def _remove_train_args() -> None:
    import ultralytics.utils as ul

    for name in _TRAIN_ARGS:
        ul.DEFAULT_CFG_DICT.pop(name, None)
        if name in vars(ul.DEFAULT_CFG):
            delattr(ul.DEFAULT_CFG, name)
    _TRAIN_ARGS.clear()


def is_registered() -> bool:
    """Return True while yolo-tood's wrappers are installed in ultralytics."""
    return bool(_PATCHES)


def register() -> None:
    """Register the TOOD heads, their losses and callbacks with ultralytics; idempotent, undone by ``unregister()``.

    With an unsupported ultralytics, only the parse_model wrapper is installed, so building a TOOD model fails with
    one clear line while stock models keep working.
    """
    import ultralytics.nn.tasks as tasks

    if not _PATCHES:
        _patch(tasks, "parse_model", _wrap_parse_model)
    try:
        check_ultralytics_version()
    except RuntimeError:
        _remove_train_args()  # a TOOD train argument is then ultralytics' own "not a valid argument" error
        return
    add_train_args()  # normally done by the start-up hook when ultralytics.utils executed
    if len(_PATCHES) > 1:
        return
    _patch(tasks.DetectionModel, "init_criterion", _wrap_init_criterion)
    import ultralytics.cfg

    _patch(ultralytics.cfg, "check_cfg", _wrap_check_cfg)  # get_cfg reads the module global when called
    original_load = tasks.yaml_model_load
    _patch(tasks, "yaml_model_load", _wrap_yaml_model_load(tasks))
    engine_model = sys.modules.get("ultralytics.engine.model")  # imported the name before registration, if at all
    if engine_model is not None and getattr(engine_model, "yaml_model_load", None) is original_load:
        _patch(engine_model, "yaml_model_load", lambda _: tasks.yaml_model_load)
    _add_callbacks()
    import_head_modules()


def import_head_modules(executed: str = "") -> None:
    """Import every head module of ``HEADS`` (the import hook then allows its classes for safe loading).

    Not while a module of the heads' package (``yolo_tood.nn``) is still executing: importing ultralytics from any of
    them (``yolo_tood.nn.tap``, say, imported first by the loss) runs ``register()`` half-way through that module,
    and the head modules import from it. The hook calls this again right after each module of the package has
    executed (``executed``: that module, whose import is not finished in name only), so every head module is
    imported once all can be.
    """
    packages = tuple({s.module.rpartition(".")[0] + "." for s in HEADS})  # yolo_tood.nn.
    package = [m for name, m in list(sys.modules.items()) if name.startswith(packages) and name != executed]
    if any(getattr(getattr(m, "__spec__", None), "_initializing", False) for m in package):
        return
    for spec in HEADS:
        if spec.module not in sys.modules:
            __import__(spec.module)


def unregister() -> None:
    """Undo ``register()``: put back every wrapped ultralytics function, remove the callbacks and the train arguments.

    Afterwards ultralytics behaves as if yolo-tood were not installed (a TOOD YAML no longer builds) until
    ``register()`` is called again. A wrapper that something else has wrapped in turn cannot be taken out from under
    it: that raises a RuntimeError naming it, and nothing is changed.
    """
    for p in _PATCHES:
        if vars(p.owner).get(p.name) is not p.wrapper:
            raise RuntimeError(
                f"yolo-tood cannot unregister: {p.owner.__name__}.{p.name} was replaced after register()"
            )
    from ultralytics.utils.callbacks.base import default_callbacks

    for p in reversed(_PATCHES):
        if p.original is _MISSING:
            delattr(p.owner, p.name)
        else:
            setattr(p.owner, p.name, p.original)
    _PATCHES.clear()
    for event, fn in _CALLBACKS:
        if fn in default_callbacks[event]:
            default_callbacks[event].remove(fn)
    _CALLBACKS.clear()
    _remove_train_args()
