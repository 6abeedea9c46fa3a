"""``yolo-tood compare``'s models: names (``stock``, ``tood``, ``tap``), head variants (``tap:key=value``), YAMLs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from yolo_tood.integration.heads import HeadSpec, head_spec
from yolo_tood.paths import CFG_DIR

# The head models by name: ``tood`` (TOODDetect, cfg/{family}-tood.yaml), ``tap`` (TAPDetect, cfg/{family}-tap.yaml).
# Their row arguments after nc, and the values of the str ones, are the head table's (integration/heads.py), read when
# used: a head argument added there is a variant key here
HEAD_MODELS = {"tood": "TOODDetect", "tap": "TAPDetect"}


def model_spec(kind: str) -> HeadSpec:
    """Return the head table's spec of a head model (``tood``, ``tap``)."""
    return head_spec(HEAD_MODELS[kind])


def head_row_args(kind: str) -> dict[str, Any]:
    """The head row's arguments after ``nc`` of a head model, in order, with their defaults (imports the head)."""
    return model_spec(kind).arg_defaults()


def head_args_help() -> str:
    """The head arguments of each head model, for ``--models``' help (reads the table; imports nothing)."""
    return "; ".join(f"{', '.join(model_spec(kind).yaml_args)} for {kind}" for kind in HEAD_MODELS)


def head_model(model: str) -> str | None:
    """Return ``tood`` or ``tap`` for a head model name or variant (``tap``, ``tap:key=value``), else None."""
    base = model.split(":", 1)[0]
    return base if base in HEAD_MODELS and (model == base or model.startswith(base + ":")) else None


def parse_variant(model: str) -> dict[str, Any]:
    """Parse a TOOD variant ``tood:key=value,key=value`` into its YAML overrides.

    Keys are the TOOD YAML keys of ``yolo_tood.train.hyp.hyp_schema()`` and the head's YAML arguments
    (``HeadSpec.yaml_args`` of the head table; a width and depth given before the scale's multipliers, like the YAML's
    own values). Values are validated as the model build would validate them; a str head argument takes one of
    ``HeadSpec.arg_choices()``.

    Args:
        model (str): ``tood:`` followed by comma-separated ``key=value`` pairs.

    Returns:
        (dict[str, Any]): Overrides with int/float values (str for a str key such as ``tal_topk_mode``).

    Raises:
        ValueError: On an unknown key, a malformed pair or an invalid value.

    Examples:
        >>> parse_variant("tood:atss_epochs=0,box_gain=7.5")
        {'atss_epochs': 0, 'box_gain': 7.5}
    """
    from yolo_tood.train.hyp import TOODHyp, hyp_schema

    base = head_model(model)
    if base is None or ":" not in model:
        raise ValueError(f"{model!r} is not a head variant: use tood:key=value,... or tap:key=value,...")
    head_args = head_row_args(base)
    hyp_types = {k.name: k.type for k in hyp_schema()}
    hyp_keys = set(hyp_types)
    choices_by_key = model_spec(base).arg_choices()
    overrides: dict[str, Any] = {}
    for pair in filter(None, model.split(":", 1)[1].split(",")):
        key, sep, value = pair.partition("=")
        if not sep or key not in hyp_keys | set(head_args):
            known = ", ".join(sorted(hyp_keys | set(head_args)))
            raise ValueError(f"bad {base} variant item {pair!r} in {model!r}: use key=value with a key from {known}")
        try:
            overrides[key] = type(head_args[key])(value) if key in head_args else hyp_types[key](value)
        except ValueError:
            raise ValueError(f"bad value {value!r} for {key} in {model!r}") from None
        if (choices := choices_by_key.get(key)) is not None and value not in choices:
            raise ValueError(f"bad value {value!r} for {key} in {model!r}: use one of {', '.join(choices)}")
    if not overrides:
        raise ValueError(f"{base} variant {model!r} has no key=value overrides")
    TOODHyp.from_yaml({k: v for k, v in overrides.items() if k in hyp_keys})  # same checks as the model build
    return overrides


def variant_tag(overrides: dict[str, Any]) -> str:
    """Return a file-name-safe tag for variant overrides, e.g. ``atss_epochs0_box_gain7.5``."""
    return "_".join(f"{k}{v}" if isinstance(v, str) else f"{k}{v:g}" for k, v in overrides.items())


def model_cfg(model: str, scale: str, out: Path | None = None, family: str = "yolov8") -> str:
    """Return the model YAML for a model name.

    Args:
        model (str): ``stock``, ``tood``, a TOOD variant ``tood:key=value,...`` (see ``parse_variant``) or a model YAML
            path.
        scale (str): Model scale, one of n/s/m/l/x.
        out (Path, optional): Directory where a variant's YAML is written (``<out>/cfg``); required for variants.
        family (str): Model family: ultralytics' ``{family}.yaml`` and the package's ``cfg/{family}-tood.yaml``.

    Returns:
        (str): ``{family}{scale}.yaml`` for stock (resolved by ultralytics), the packaged YAML path for tood / tap, a
            written ``{family}{scale}-tood-<tag>.yaml`` for a variant, else ``model`` unchanged.
    """
    if model == "stock":
        return f"{family}{scale}.yaml"
    if (kind := head_model(model)) is not None:
        base = CFG_DIR / f"{family}-{kind}.yaml"
        if not base.exists():
            raise FileNotFoundError(f"{base} not found: no {kind} YAML for family {family!r}")
        if model == kind:
            return str(CFG_DIR / f"{family}{scale}-{kind}.yaml")  # ultralytics maps it to {family}-{kind}.yaml
        if out is None:
            raise ValueError(f"a {kind} variant needs an output directory for its YAML")
        import yaml

        overrides = parse_variant(model)
        tag = variant_tag(overrides)
        cfg = yaml.safe_load(base.read_text())
        head_row = cfg["head"][-1]  # [from, repeats, TOODDetect | TAPDetect, [nc, *head args]]
        head_args = head_row_args(kind)
        for i, key in enumerate(head_args, start=1):
            if key in overrides:
                head_row[3] += list(head_args.values())[len(head_row[3]) - 1 : i]  # defaults of omitted args before
                head_row[3][i] = overrides.pop(key)
        cfg.update(overrides)
        path = out / "cfg" / f"{family}{scale}-{kind}-{tag}.yaml"  # scale in the name, for ultralytics' scale guess
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return str(path)
    return model


def model_labels(models: list[str]) -> list[str]:
    """Return unique labels for the model list (``stock stock`` -> ``stock stock_2``), used in run names and tables.

    A variant ``tood:key=value,...`` / ``tap:key=value,...`` is labelled ``tood-<tag>`` / ``tap-<tag>`` (see
    ``variant_tag``).
    """
    labels, seen = [], {}
    for m in models:
        if (kind := head_model(m)) is not None and m != kind:
            base = f"{kind}-{variant_tag(parse_variant(m))}"
        else:
            base = Path(m).stem if m.endswith((".yaml", ".yml")) else m
        seen[base] = seen.get(base, 0) + 1
        labels.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return labels
