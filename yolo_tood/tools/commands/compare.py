"""``yolo-tood compare``: train stock and TOOD models with one recipe, side by side; compare accuracy, cost, speed.

Usage:
    yolo-tood compare --scale n --epochs 60 --imgsz 320 --batch 16 --seeds 0 1 2 \
        --data $YOLO_TOOD_SHARED/datasets/bccd/bccd.yaml --out runs/compare --models stock tood --alignment

    # ablations of the TOOD head, selected on val only
    yolo-tood compare --seeds 0 --val-only --alignment --data $YOLO_TOOD_SHARED/datasets/bccd/bccd.yaml \
        --models tood tood:atss_epochs=0 tood:box_gain=7.5,cls_gain=0.5,dfl_gain=1.5 --out runs/ablate

    # fine-tuning: both models start from one stock checkpoint (the TOOD model gets its backbone and neck)
    yolo-tood compare --seeds 0 --pretrained stock_bccd.pt --data road_traffic.yaml --models stock tap \
        --out runs/finetune

    # tiny end-to-end check (minutes, not hours)
    yolo-tood compare --epochs 1 --imgsz 64 --batch 8 --seeds 0 --models stock stock \
        --data $YOLO_TOOD_SHARED/datasets/bccd/bccd.yaml --out /tmp/compare_tiny

Models (``--family`` yolov8 by default): ``stock`` is ultralytics' ``{family}{scale}.yaml``, ``tood`` is the
package's ``yolo_tood/cfg/{family}{scale}-tood.yaml`` (the T-Head; one YAML with ``scales:``, resolved by ultralytics'
scale naming),
``tap`` is ``yolo_tood/cfg/{family}{scale}-tap.yaml`` (the stock head with TOOD's task-aligned predictor, TAPDetect),
``tood:key=value,...`` / ``tap:key=value,...`` are variants for ablations (e.g. ``tood:atss_epochs=0``,
``tood:feat_channels=512``, ``tap:tap=none``; the YAML is written to ``--out``/cfg), and any other value is used as a
model YAML path. Each
(model, seed) trains through the ultralytics trainer with the same data, epochs, imgsz, batch, seed, optimizer and
learning rate, ``deterministic=True``, then is validated (best.pt) on ``val`` and, if the data YAML has one, ``test``.

Outputs in ``--out``: ``runs/<model>_s<seed>/`` (ultralytics run dirs, plots kept), ``val/`` (validation runs),
``compare.json`` (everything), ``compare.md`` (tables) and ``compare_map.png`` (val mAP50-95 per epoch, mean and std
band over seeds); with ``--alignment`` also ``score_iou.png`` (val score vs IoU of each object's top-50 predictions,
one panel per model, its first seed; the pairs are kept in ``runs/<model>_s<seed>/score_iou_<split>.pt``).
Resumable: a run whose ``weights/best.pt``, ``results.csv`` and ``compare_run.json`` (written when its training has
finished) exist, with the same recipe, is not trained again; an interrupted run is trained again from scratch. With
``--pretrained`` the recipe holds the checkpoint's path and SHA-256, so a checkpoint replaced at the same path trains
every run again (and ``yolo-tood merge`` refuses to join reports of two checkpoints).

Reported cost and speed:
- params: all parameters of the unfused model (as printed by ultralytics at training time).
- GFLOPs (thop): ultralytics' ``get_flops`` of the unfused model at the training imgsz. THOP counts only hooked
  ``nn.Module`` types, so functional ops (e.g. TOOD's batched matmul and grid_sample) are missed.
- GFLOPs (torch): ``torch.utils.flop_counter.FlopCounterMode`` (2 x multiply-accumulates of conv/matmul/bmm aten ops,
  the same convention as ultralytics), which does see functional matmuls; elementwise ops are not counted by either.
- s/epoch: results.csv ``time`` (seconds since training start, logged after each epoch's validation) / epochs, i.e.
  train + per-epoch validation.
- train img/s: training images x epochs / time spent in the training phase of the epochs only (timed between the
  ``on_train_epoch_start`` and ``on_train_epoch_end`` callbacks, so per-epoch validation is excluded).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from copy import deepcopy
from pathlib import Path
from typing import Any, Callable

import torch

import yolo_tood  # noqa: F401  registers the TOOD head so TOOD YAMLs and checkpoints load
from yolo_tood.integration.heads import CFG_DIR, HEADS
from yolo_tood.tools.analysis import AlignmentResult, evaluate_alignment
from yolo_tood.tools.analysis.nms_guard import NMSTimeLimitGuard, run_with_batch1_retry
from yolo_tood.tools.analysis.plots import plot_score_iou
from yolo_tood.tools.analysis.report import (
    alignment_table,
    curve_gap,
    fmt,
    json_clean,
    markdown_table,
    mean_std,
    plot_curves,
    pm,
)
from yolo_tood.tools.analysis.tal_stats import PLOT_FILE, STATS_FILE, plot_tal_stats
from yolo_tood.tools.commands.common import check_split, data_yaml, model_yaml_error, parse_and_run

RUN_RECORD = "compare_run.json"  # written into a run dir once its training has finished
MAP_COLUMN = "metrics/mAP50-95(B)"


# ----------------------------------------------------------------------------------------------------------------------
# Models and runs
# ----------------------------------------------------------------------------------------------------------------------
CURVE_AFTER = 10  # the curve goal ignores the first 10 epochs (generalisation issue: "after the first 10 epochs")
# The head models by name: ``tood`` (TOODDetect, cfg/{family}-tood.yaml), ``tap`` (TAPDetect, cfg/{family}-tap.yaml),
# and their row args after nc (TOODDetect: feat_channels, stacked_convs unscaled, norm, tap, adapter, quality;
# TAPDetect: tap, interact, quality)
HEAD_MODELS = {"tood": "TOODDetect", "tap": "TAPDetect"}
HEAD_ROW_ARGS = {model: next(h for h in HEADS if h.name == name).arg_defaults() for model, name in HEAD_MODELS.items()}


def head_model(model: str) -> str | None:
    """Return ``tood`` or ``tap`` for a head model name or variant (``tap``, ``tap:key=value``), else None."""
    base = model.split(":", 1)[0]
    return base if base in HEAD_MODELS and (model == base or model.startswith(base + ":")) else None


def head_arg_choices() -> dict[str, tuple[str, ...]]:
    """The values each string head argument accepts (the heads' own tuples, so a variant fails before training)."""
    from yolo_tood.nn.head import ADAPTERS, HEAD_NORMS, QUALITY_MODES, TAP_MODES
    from yolo_tood.nn.tap_head import INTERACT_MODES

    return {
        "norm": HEAD_NORMS,
        "tap": TAP_MODES,
        "adapter": ADAPTERS,
        "interact": INTERACT_MODES,
        "quality": QUALITY_MODES,
    }


def parse_variant(model: str) -> dict[str, Any]:
    """Parse a TOOD variant ``tood:key=value,key=value`` into its YAML overrides.

    Keys are the TOOD YAML keys of ``yolo_tood.train.hyp.hyp_schema()`` and the head's YAML arguments
    (``feat_channels``/``stacked_convs``/``norm``/``tap``/``adapter``, from ``yolo_tood.integration.heads``; width and
    depth given before the scale's multipliers, like the YAML's own values). Values are validated as the model build
    would validate them.

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
    head_args = HEAD_ROW_ARGS[base]
    hyp_types = {k.name: k.type for k in hyp_schema()}
    hyp_keys = set(hyp_types)
    choices_by_key = head_arg_choices()
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


def file_sha256(path: Path) -> str:
    """Return the SHA-256 hex digest of a file's bytes (a checkpoint's identity in a compare recipe)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
        head_args = HEAD_ROW_ARGS[kind]
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


def read_results_csv(path: Path) -> dict[str, list[float]]:
    """Read an ultralytics results.csv into columns of floats (headers stripped of padding)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    cols = [c.strip() for c in rows[0]] if rows else []
    return {c: [float(r[k]) for r in rows] for c, k in zip(cols, rows[0] if rows else [])}


def load_record(run_dir: Path) -> dict[str, Any] | None:
    """Return the run record of a finished run, or None if the run is missing or incomplete."""
    record = run_dir / RUN_RECORD
    if (run_dir / "weights" / "best.pt").exists() and (run_dir / "results.csv").exists() and record.exists():
        return json.loads(record.read_text())
    return None


def save_record(run_dir: Path, record: dict[str, Any]) -> None:
    """Write a run record (atomically, so an interrupted write never looks like a finished run)."""
    tmp = run_dir / (RUN_RECORD + ".tmp")
    tmp.write_text(json.dumps(json_clean(record), indent=2, default=str))
    tmp.replace(run_dir / RUN_RECORD)


def train_run(cfg: str, run_dir: Path, recipe: dict[str, Any], seed: int) -> dict[str, Any]:
    """Train one model with the shared recipe and return its training record.

    Args:
        cfg (str): Model YAML.
        run_dir (Path): Run directory (``project/name`` of the ultralytics trainer).
        recipe (dict[str, Any]): Trainer arguments shared by all runs.
        seed (int): Random seed of this run.

    Returns:
        (dict[str, Any]): ``train`` record with wall-clock time, per-epoch training-phase times and image count.
    """
    from ultralytics import YOLO

    timing: dict[str, Any] = {"phase_s": [], "n_train_images": None}

    def on_train_start(trainer):
        timing["n_train_images"] = len(trainer.train_loader.dataset)

    def on_train_epoch_start(trainer):
        timing["t0"] = time.perf_counter()

    def on_train_epoch_end(trainer):  # runs before the epoch's validation
        timing["phase_s"].append(time.perf_counter() - timing["t0"])

    model = YOLO(cfg)
    model.add_callback("on_train_start", on_train_start)
    model.add_callback("on_train_epoch_start", on_train_epoch_start)
    model.add_callback("on_train_epoch_end", on_train_epoch_end)
    t0 = time.perf_counter()
    with NMSTimeLimitGuard() as guard:  # per-epoch validation: the curves and best.pt are void if NMS was cut short
        model.train(**recipe, seed=seed, project=str(run_dir.parent), name=run_dir.name, exist_ok=True)
    wall = time.perf_counter() - t0
    stats = Path(model.trainer.save_dir) / STATS_FILE
    if stats.is_file():  # a TOOD run: the picture of its assignment statistics (the plug-in wrote the .jsonl)
        plot_tal_stats(stats, stats.with_name(PLOT_FILE))
    if guard.hits:
        print(
            f"WARNING: NMS time limit hit {guard.hits}x in the per-epoch validation of {run_dir.name}: its curves "
            "and best.pt choice are void"
        )
    return {
        "nms_time_limit_hits": guard.hits,
        "cfg": cfg,
        "seed": seed,
        "wall_s": wall,
        "train_phase_s": timing["phase_s"],
        "n_train_images": timing["n_train_images"],
        "save_dir": str(model.trainer.save_dir),
    }


def model_cost(weights: Path, imgsz: int) -> dict[str, float]:
    """Return parameters and GFLOPs (THOP and torch's flop counter) of a trained model at ``imgsz``.

    Args:
        weights (Path): Checkpoint.
        imgsz (int): Square input size used for the FLOPs.

    Returns:
        (dict[str, float]): ``params``, ``gflops_thop``, ``gflops_torch``.
    """
    from torch.utils.flop_counter import FlopCounterMode
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    net = deepcopy(YOLO(str(weights)).model).float().eval()  # checkpoints are stored in half precision
    im = torch.zeros(1, 3, imgsz, imgsz)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(im)
    return {
        "params": get_num_params(net),
        "gflops_thop": get_flops(net, imgsz),
        "gflops_torch": counter.get_total_flops() / 1e9,
    }


def validate_run(
    weights: Path, data: str, split: str, args: argparse.Namespace, val_dir: Path, name: str
) -> dict[str, Any]:
    """Validate a checkpoint on one split and return mAP50, mAP50-95 and per-class mAP50-95.

    Args:
        weights (Path): Checkpoint.
        data (str): Dataset YAML.
        split (str): ``val`` or ``test``.
        args (argparse.Namespace): Script arguments (imgsz, batch, device).
        val_dir (Path): Project directory of the validation runs.
        name (str): Run name.

    Returns:
        (dict[str, Any]): ``map50``, ``map``, ``per_class`` (class name -> mAP50-95, classes with labels only).
    """
    from ultralytics import YOLO

    def val(batch: int):
        return YOLO(str(weights)).val(
            data=data,
            split=split,
            imgsz=args.imgsz,
            batch=batch,
            device=args.device,
            workers=0,
            plots=True,
            project=str(val_dir),
            name=name,
            exist_ok=True,
        )

    # detections dropped by the NMS time limit make the figures void: validate again one image at a time
    metrics, hits = run_with_batch1_retry(val, args.batch, f"re-validation of {name}")
    names = metrics.names
    per_class = {names[int(c)]: float(ap) for c, ap in zip(metrics.ap_class_index, metrics.box.ap)}
    return {
        "map50": float(metrics.box.map50),
        "map": float(metrics.box.map),
        "per_class": per_class,
        "revalidated_batch1": bool(hits),
    }


def has_split(data: str, split: str) -> bool:
    """Return whether the dataset YAML defines a split (e.g. ``test:``)."""
    from ultralytics.data.utils import check_det_dataset

    return bool(check_det_dataset(data).get(split))


# ----------------------------------------------------------------------------------------------------------------------
# Aggregation and reporting
# ----------------------------------------------------------------------------------------------------------------------
def speed_of(record: dict[str, Any], results: dict[str, list[float]]) -> dict[str, float]:
    """Return per-epoch time and training throughput of one run from its record and results.csv."""
    epochs = len(results.get("epoch", [])) or 1
    phase = sum(record["train_phase_s"])
    n_epochs_timed = len(record["train_phase_s"])
    imgs = record["n_train_images"] or 0
    return {
        "epoch_s": results["time"][-1] / epochs if results.get("time") else float("nan"),
        "train_img_per_s": imgs * n_epochs_timed / phase if phase > 0 else float("nan"),
        "wall_s": record["wall_s"],
    }


def summarize(runs: dict[str, dict[int, dict[str, Any]]], splits: list[str]) -> dict[str, Any]:
    """Aggregate the per-seed records of each model: mean and std of mAPs, per-class AP and speed."""
    summary: dict[str, Any] = {}
    base = next(iter(runs), None)
    for label, seeds in runs.items():
        recs = list(seeds.values())
        s: dict[str, Any] = {"cost": recs[0]["cost"], "splits": {}}
        for split in splits:
            vals = [r["val"][split] for r in recs if split in r.get("val", {})]
            if not vals:
                continue
            classes = sorted({c for v in vals for c in v["per_class"]})
            s["splits"][split] = {
                "map50": mean_std([v["map50"] for v in vals]),
                "map": mean_std([v["map"] for v in vals]),
                "per_class": {c: mean_std([v["per_class"].get(c, float("nan")) for v in vals]) for c in classes},
            }
        for k in ("epoch_s", "train_img_per_s", "wall_s"):
            s[k] = mean_std([r["speed"][k] for r in recs])
        summary[label] = s
    if base is not None:  # throughput relative to the first model (TOOD/stock for --models stock tood)
        for label, s in summary.items():
            num, den = s["train_img_per_s"]["mean"], summary[base]["train_img_per_s"]["mean"]
            s["img_per_s_ratio_vs_" + base] = num / den if num and den else None
            if label != base:
                s["paired_vs_" + base] = paired_differences(runs[base], runs[label], splits)
    return summary


def paired_differences(
    base: dict[int, dict[str, Any]], other: dict[int, dict[str, Any]], splits: list[str]
) -> dict[str, dict[str, Any]]:
    """Per split, mAP50-95 of ``other`` minus ``base`` seed by seed (the seeds both have), and their mean and std.

    Seeds pair the two models' runs (same data order, augmentation and init RNG), so the spread of the paired
    differences, not the two models' own spreads, says whether a difference is more than seed noise.

    Returns:
        (dict[str, dict[str, Any]]): split -> ``{"diffs": {seed: difference}, "mean", "std", "n"}`` (``mean_std``
            of the differences; std None for one seed).

    Examples:
        >>> run = lambda m: {"val": {"val": {"map": m}}}
        >>> d = paired_differences({0: run(0.5), 1: run(0.6)}, {0: run(0.52), 1: run(0.57), 2: run(0.9)}, ["val"])
        >>> {k: round(v, 3) for k, v in d["val"]["diffs"].items()}, round(d["val"]["mean"], 3), d["val"]["n"]
        ({0: 0.02, 1: -0.03}, -0.005, 2)
    """
    out: dict[str, dict[str, Any]] = {}
    for split in splits:
        diffs = {
            seed: other[seed]["val"][split]["map"] - base[seed]["val"][split]["map"]
            for seed in sorted(set(base) & set(other))
            if split in base[seed].get("val", {}) and split in other[seed].get("val", {})
        }
        if diffs:
            out[split] = {"diffs": diffs, **mean_std(list(diffs.values()))}
    return out


def curve_gaps(curves: dict[str, list[list[float]]], after: int = CURVE_AFTER) -> dict[str, dict[str, Any]]:
    """Return ``curve_gap`` of every model's val mAP50-95 curve against the first model's (e.g. TOOD vs stock)."""
    base, *others = curves
    return {label: curve_gap(curves[base], curves[label], after=after) for label in others}


def write_markdown(
    path: Path,
    args: argparse.Namespace,
    runs: dict,
    summary: dict,
    splits: list[str],
    gaps: dict | None = None,
    score_iou: bool | None = None,
) -> str:
    """Write compare.md: recipe, summary, per-class AP, per-seed figures, the val curve gaps and alignment tables.

    ``score_iou`` says whether ``score_iou.png`` was drawn beside it (default: with ``--alignment``).
    """
    labels = list(runs)
    base = labels[0]
    n_seeds = len(args.seeds)
    out = [
        f"# {args.family}{args.scale}: {' vs '.join(labels)}",
        "",
        f"Data `{args.data}`; {args.epochs} epochs, imgsz {args.imgsz}, batch {args.batch}, optimizer {args.optimizer} "
        f"lr0 {args.lr0}, seeds {' '.join(map(str, args.seeds))}, deterministic, device {args.device}, "
        f"workers {args.workers}. Values are mean ± sample std over {n_seeds} seeds"
        + (" (one seed: no std)." if n_seeds == 1 else "."),
        "",
        "## Summary",
        "",
    ]
    header = ["model", "params (M)", "GFLOPs thop", "GFLOPs torch"]
    for split in splits:
        header += [f"{split} mAP50", f"{split} mAP50-95"]
    header += ["s/epoch", "train img/s", f"img/s ratio vs {base}"]
    rows = []
    for label in labels:
        s = summary[label]
        c = s["cost"]
        row = [label, f"{c['params'] / 1e6:.3f}", f"{c['gflops_thop']:.2f}", f"{c['gflops_torch']:.2f}"]
        for split in splits:
            sp = s["splits"].get(split)
            row += [pm(sp["map50"]), pm(sp["map"])] if sp else ["-", "-"]
        row += [pm(s["epoch_s"], 1), pm(s["train_img_per_s"], 1), fmt(s["img_per_s_ratio_vs_" + base], 2)]
        rows.append(row)
    out += [markdown_table(header, rows), ""]
    out += [
        f"GFLOPs at imgsz {args.imgsz}, unfused. s/epoch includes the per-epoch validation; train img/s counts the "
        "training phase only. See `yolo-tood compare --help` for the exact definitions.",
        "",
    ]
    for split in splits:
        classes = sorted({c for label in labels for c in summary[label]["splits"].get(split, {}).get("per_class", {})})
        if not classes:
            continue
        out += [f"## Per-class AP (mAP50-95), {split}", ""]
        rows = [[c] + [pm(summary[lb]["splits"].get(split, {}).get("per_class", {}).get(c)) for lb in labels]
                for c in classes]  # fmt: skip
        out += [markdown_table(["class", *labels], rows), ""]
    paired = {label: summary[label].get("paired_vs_" + base, {}) for label in labels[1:]}
    if any(paired.values()):
        out += [f"## Paired differences vs {base} (mAP50-95 points, same seeds)", ""]
        header = ["model"] + [f"{split} {kind}" for split in splits for kind in ("per seed", "mean ± std")]
        rows = []
        for label, by_split in paired.items():
            row = [label]
            for split in splits:
                d = by_split.get(split)
                if d is None:
                    row += ["-", "-"]
                    continue
                mean = f"{100 * d['mean']:+.1f}" + ("" if d["std"] is None else f" ± {100 * d['std']:.1f}")
                row += [", ".join(f"s{seed} {100 * v:+.1f}" for seed, v in d["diffs"].items()), mean]
            rows.append(row)
        out += [markdown_table(header, rows), ""]
    out += ["## Per seed", ""]
    header = ["model", "seed"] + [f"{sp} {m}" for sp in splits for m in ("mAP50", "mAP50-95")]
    header += ["s/epoch", "train img/s", "train wall (s)"]
    rows = []
    for label in labels:
        for seed, r in runs[label].items():
            row = [label, str(seed)]
            for split in splits:
                v = r["val"].get(split)
                row += [f"{v['map50']:.3f}", f"{v['map']:.3f}"] if v else ["-", "-"]
            sp = r["speed"]
            row += [f"{sp['epoch_s']:.1f}", f"{sp['train_img_per_s']:.1f}", f"{sp['wall_s']:.0f}"]
            rows.append(row)
    out += [markdown_table(header, rows), ""]
    if gaps:
        out += [f"## Val curve against {base}", ""]
        out += [
            f"Val mAP50-95 per epoch, mean over seeds, compared with {base}'s from epoch {CURVE_AFTER + 1} on: the "
            f"epochs more than 1 point below it and the largest deficit.",
            "",
        ]
        rows = [
            [
                label,
                ", ".join(map(str, g["below"])) or "none",
                "-" if g["worst"] is None else f"{100 * g['worst']:+.1f} (epoch {g['worst_epoch']})",
                f"{g['seeds'][1]} / {g['seeds'][0]}",
            ]
            for label, g in gaps.items()
        ]
        out += [markdown_table(["model", "epochs > 1 point below", "worst (points)", "seeds (model / base)"], rows)]
        out += [""]
    if args.alignment:
        out += ["## Task alignment (TOOD paper Table 7 analysis)", ""]
        out += [
            f"Pre-NMS PCC top-50 and IoU top-10; post-NMS counts at conf {args.align_conf}, NMS IoU 0.7, max_det 300 "
            "(definitions: yolo_tood/tools/analysis/alignment.py). mAP50-95 at the validator's conf 0.001.",
            "",
        ]
        for split in splits:
            results = {
                f"{label} s{seed}": AlignmentResult(**r["alignment"][split])
                for label in labels
                for seed, r in runs[label].items()
                if split in r.get("alignment", {})
            }
            if results:
                out += [f"### {split}", "", alignment_table(results), ""]
                if all(r.budget for r in results.values()):
                    out += ["Equal budget: each model's threshold leaves as many detections as objects.", ""]
                    out += [alignment_table(results, budget=True), ""]
    out += ["![val mAP50-95 per epoch](compare_map.png)", ""]
    if args.alignment if score_iou is None else score_iou:
        out += [f"![val score vs IoU, seed {args.seeds[0]}](score_iou.png)", ""]
    text = "\n".join(out)
    path.write_text(text)
    return text


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add compare's arguments to a parser (``yolo-tood compare`` and ``scripts/compare.py``)."""
    p.add_argument("--data", required=True, help="detection data YAML (train, val and optionally test splits)")
    p.add_argument(
        "--models",
        nargs="+",
        default=["stock", "tood"],
        help="stock, tood, tap, a variant such as tood:atss_epochs=0,box_gain=7.5 (TOOD YAML keys and the head's "
        "YAML args: feat_channels, stacked_convs, norm, tap, adapter, quality for tood; tap, interact, quality for "
        "tap) or "
        "tap:tap=none, or model YAML paths",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one run per (model, seed), paired")
    p.add_argument(
        "--family",
        default="yolov8",
        help="model family: ultralytics' {family}{scale}.yaml vs yolo_tood/cfg/{family}-tood.yaml and -tap.yaml",
    )
    p.add_argument("--scale", default="n", choices=list("nsmlx"), help="model scale")
    p.add_argument("--epochs", type=int, default=60, help="training epochs of every run")
    p.add_argument("--imgsz", type=int, default=320, help="train and validation image size")
    p.add_argument("--batch", type=int, default=16, help="batch size (training and validation)")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (runs, compare.json/.md)")
    p.add_argument(
        "--optimizer",
        default="auto",
        help="same for all models; ultralytics' auto choice depends only on nc and iterations",
    )
    p.add_argument("--lr0", type=float, default=0.01, help="initial learning rate (ignored by optimizer=auto)")
    p.add_argument(
        "--momentum",
        type=float,
        default=0.937,
        help="SGD momentum / Adam beta1 (ultralytics' default 0.937; optimizer=auto picks its own, 0.9)",
    )
    p.add_argument(
        "--pretrained",
        type=Path,
        default=None,
        help="fine-tune every model from this checkpoint (ultralytics' pretrained=: tensors of the same name and "
        "shape transfer, so a stock checkpoint gives a TOOD model its backbone and neck)",
    )
    p.add_argument("--workers", type=int, default=2, help="dataloader workers of the training runs")
    p.add_argument("--device", default="cpu", help="device of every run (cpu, 0, 0,1, ...)")
    p.add_argument(
        "--val-only", action="store_true", help="skip the test split (ablations and tuning must never look at test)"
    )
    p.add_argument("--alignment", action="store_true", help="also run the task-alignment diagnostics")
    p.add_argument("--align-conf", type=float, default=0.05, help="NMS score threshold of the alignment counts")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the arguments before anything trains: one line naming the argument on the first bad one.

    Resolves every model (``stock``'s ultralytics YAML, the packaged head YAMLs, each variant's keys and values,
    each model YAML path), reads the data YAML and makes ``--out`` absolute (ultralytics puts relative projects under
    its runs_dir).
    """
    check_split(parser, args.data, data_yaml(parser, args.data), "val", flag="--data")
    for flag, value in (("--epochs", args.epochs), ("--imgsz", args.imgsz), ("--batch", args.batch)):
        if value < 1:
            parser.error(f"argument {flag}: must be >= 1, got {value}")
    if args.pretrained is not None and not args.pretrained.is_file():
        parser.error(f"argument --pretrained: {str(args.pretrained)!r} is not a file")
    for model in args.models:
        kind = head_model(model)
        if model != "stock" and kind is None and not model.endswith((".yaml", ".yml")):
            parser.error(
                f"argument --models: unknown model {model!r}: use stock, tood, tap, tood:key=value,..., "
                "tap:key=value,... or a model YAML"
            )
        try:
            if kind is not None and model != kind:
                parse_variant(model)
                model = kind  # the variant's YAML is written at run time; its base must resolve now
            cfg = model_cfg(model, args.scale, None, args.family)
        except (ValueError, FileNotFoundError) as e:
            parser.error(f"argument --models: {e}")
        if not Path(cfg).is_file() and (why := model_yaml_error(cfg)) is not None:
            parser.error(f"argument --models: {why}")
    args.out = args.out.resolve()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments (no checks: ``check_args`` runs them, as ``main`` does)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    args.out = args.out.resolve()  # absolute: ultralytics puts relative projects under its runs_dir
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse and check the arguments, then ``run``."""
    return parse_and_run(sys.modules[__name__], "compare", argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train, validate and compare; write compare.json, compare.md and compare_map.png into ``--out``.

    Args:
        args (argparse.Namespace): Checked arguments (``check_args``).

    Returns:
        (dict[str, Any]): The content of compare.json.
    """
    args.out.mkdir(parents=True, exist_ok=True)
    splits = ["val"] + (["test"] if has_split(args.data, "test") and not args.val_only else [])
    train_args = {  # the trainer's arguments, shared by every run
        "data": args.data,
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "optimizer": args.optimizer,
        "lr0": args.lr0,
        "momentum": args.momentum,
        "deterministic": True,
        "workers": args.workers,
        "device": args.device,
        "plots": True,
    }
    recipe = dict(train_args)  # what a run's record and the report are keyed by: the trainer's arguments and more
    if args.pretrained is not None:  # only when given, so that the records of from-scratch runs stay valid
        train_args["pretrained"] = recipe["pretrained"] = str(args.pretrained.resolve())
        # The checkpoint's content, not only its path: a source retrained at the same path (CPU training is not
        # bit-reproducible across thread counts: one command gave val 0.107, 0.124 and 0.133) makes the cached runs
        # stale and the reports of the two sources unmergeable
        recipe["pretrained_sha256"] = file_sha256(args.pretrained)
    labels = model_labels(args.models)
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    curves: dict[str, list[list[float]]] = {}
    n_runs, i_run = len(labels) * len(args.seeds), 0
    for label, model in zip(labels, args.models):
        cfg = model_cfg(model, args.scale, args.out, args.family)
        runs[label], curves[label] = {}, []
        for seed in args.seeds:
            i_run += 1
            run_dir = args.out / "runs" / f"{label}_s{seed}"
            record = load_record(run_dir)
            if record is None or record.get("recipe") != {**recipe, "cfg": cfg}:
                print(f"\n[{i_run}/{n_runs}] {label} seed {seed}: training {cfg} -> {run_dir}")
                record = {"recipe": {**recipe, "cfg": cfg}, "train": train_run(cfg, run_dir, train_args, seed)}
                save_record(run_dir, record)
            else:
                print(f"\n[{i_run}/{n_runs}] {label} seed {seed}: {run_dir} already trained, not training again")
            results = read_results_csv(run_dir / "results.csv")
            best = run_dir / "weights" / "best.pt"
            record.setdefault("val", {})
            record.setdefault("alignment", {})
            if "cost" not in record:
                record["cost"] = model_cost(best, args.imgsz)
            for split in splits:
                if split not in record["val"]:
                    record["val"][split] = validate_run(best, args.data, split, args, args.out / "val", run_dir.name)
                pairs = run_dir / f"score_iou_{split}.pt"  # the score_iou.png data, kept beside the cached record
                if args.alignment and (split not in record["alignment"] or not pairs.exists()):
                    res = evaluate_alignment(
                        best, args.data, split=split, imgsz=args.imgsz, batch=args.batch, conf=args.align_conf,
                        device=args.device, workers=0,
                    )  # fmt: skip
                    record["alignment"][split] = res.to_dict()
                    torch.save(res.score_iou, pairs)
            record["speed"] = speed_of(record["train"], results)
            record["curve"] = results.get(MAP_COLUMN, [])  # so that the report alone can be merged (yolo-tood merge)
            save_record(run_dir, record)  # validation results are cached too
            maps = ", ".join(f"{split} mAP50-95 {record['val'][split]['map']:.3f}" for split in splits)
            print(f"[{i_run}/{n_runs}] {label} seed {seed}: {maps}")
            runs[label][seed] = record
            curves[label].append(record["curve"])

    env = {"ultralytics": __import__("ultralytics").__version__, "torch": torch.__version__}
    env.update(python=platform.python_version(), machine=platform.processor() or platform.machine())
    report, text, outputs = write_report(
        args, runs, curves, splits, recipe, env, run_dir=lambda label, seed, _: args.out / "runs" / f"{label}_s{seed}"
    )
    print("\n" + text)
    print("\nWrote " + ", ".join(str(args.out / f) for f in outputs))
    return report


def write_report(
    args: argparse.Namespace,
    runs: dict[str, dict[int, dict[str, Any]]],
    curves: dict[str, list[list[float]]],
    splits: list[str],
    recipe: dict[str, Any],
    env: Any,
    run_dir: Callable[[str, int, dict[str, Any]], Path],
    **extra: Any,
) -> tuple[dict[str, Any], str, list[str]]:
    """Summarise runs and write compare.json, compare.md, compare_map.png and score_iou.png into ``args.out``.

    Shared by ``compare`` (its own runs) and ``merge`` (the runs of several reports).

    Args:
        args (argparse.Namespace): compare's arguments (or a merge's view of them), saved as ``args``.
        runs (dict): Run records by model label and seed; the first label is the base of the comparisons.
        curves (dict): Per label, the val mAP50-95 curve of each seed that has one; a label may be missing.
        splits (list[str]): Validated splits, ``val`` first.
        recipe (dict[str, Any]): The shared training recipe.
        env (Any): Versions and machine of the run(s).
        run_dir (Callable): (label, seed, record) -> the run's folder, which holds ``score_iou_val.pt``.
        **extra: More top-level keys of compare.json.

    Returns:
        report (dict[str, Any]): The content of compare.json.
        text (str): compare.md.
        outputs (list[str]): The files written, by name.
    """
    summary = summarize(runs, splits)
    gaps = curve_gaps(curves) if next(iter(runs)) in curves else {}
    report = {"args": vars(args), "recipe": recipe, "splits": splits, "env": env, "summary": summary, "runs": runs}
    report.update(curve_gaps=gaps, **extra)
    (args.out / "compare.json").write_text(json.dumps(json_clean(report), indent=2, default=str))
    outputs = ["compare.json", "compare.md"]
    if curves:
        plot_curves(args.out / "compare_map.png", curves)
        outputs.append("compare_map.png")
    results = first_seed_alignment(runs, run_dir) if args.alignment else None
    if results:
        plot_score_iou(results, args.out / "score_iou.png")
        outputs.append("score_iou.png")
    text = write_markdown(args.out / "compare.md", args, runs, summary, splits, gaps, score_iou=bool(results))
    return report, text, outputs


def first_seed_alignment(
    runs: dict[str, dict[int, dict[str, Any]]], run_dir: Callable[[str, int, dict[str, Any]], Path]
) -> dict[str, AlignmentResult] | None:
    """The val alignment of each model's first seed with its score/IoU pairs; None if any model's is missing."""
    results = {}
    for label, by_seed in runs.items():
        seed, record = next(iter(by_seed.items()))
        pairs = run_dir(label, seed, record) / "score_iou_val.pt"
        if "val" not in record.get("alignment", {}) or not pairs.is_file():
            return None
        results[f"{label} s{seed}"] = AlignmentResult(**record["alignment"]["val"], score_iou=torch.load(pairs))
    return results


if __name__ == "__main__":
    main()
