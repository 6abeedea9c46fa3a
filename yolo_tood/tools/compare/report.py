"""``yolo-tood compare``'s report: statistics over seeds, paired differences, and compare.json / compare.md / plots."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import torch

from yolo_tood.tools.analysis import AlignmentResult
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

CURVE_AFTER = 10  # the curve goal ignores the first 10 epochs (generalisation issue: "after the first 10 epochs")


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
    out = [*_recipe_lines(args, labels), *_summary_lines(args, labels, summary, splits)]
    out += _per_class_lines(labels, summary, splits) + _paired_lines(labels, summary, splits)
    out += _per_seed_lines(runs, splits)
    if gaps:
        out += _curve_lines(labels[0], gaps)
    if args.alignment:
        out += _alignment_lines(args, runs, splits)
    out += ["![val mAP50-95 per epoch](compare_map.png)", ""]
    if args.alignment if score_iou is None else score_iou:
        out += [f"![val score vs IoU, seed {args.seeds[0]}](score_iou.png)", ""]
    text = "\n".join(out)
    path.write_text(text)
    return text


def _recipe_lines(args: argparse.Namespace, labels: list[str]) -> list[str]:
    """The title and the shared recipe."""
    n_seeds = len(args.seeds)
    return [
        f"# {args.family}{args.scale}: {' vs '.join(labels)}",
        "",
        f"Data `{args.data}`; {args.epochs} epochs, imgsz {args.imgsz}, batch {args.batch}, optimizer {args.optimizer} "
        f"lr0 {args.lr0}, seeds {' '.join(map(str, args.seeds))}, deterministic, device {args.device}, "
        f"workers {args.workers}. Values are mean ± sample std over {n_seeds} seeds"
        + (" (one seed: no std)." if n_seeds == 1 else "."),
        "",
    ]


def _summary_lines(args: argparse.Namespace, labels: list[str], summary: dict, splits: list[str]) -> list[str]:
    """The summary table: cost, mAPs per split, speed and its ratio to the first model."""
    base = labels[0]
    header = ["model", "params (M)", "GFLOPs thop", "GFLOPs torch"]
    for split in splits:
        header += [f"{split} mAP50", f"{split} mAP50-95"]
    header += ["s/epoch", "train img/s", f"img/s ratio vs {base}"]
    rows = []
    for label in labels:
        s, c = summary[label], summary[label]["cost"]
        row = [label, f"{c['params'] / 1e6:.3f}", f"{c['gflops_thop']:.2f}", f"{c['gflops_torch']:.2f}"]
        for split in splits:
            sp = s["splits"].get(split)
            row += [pm(sp["map50"]), pm(sp["map"])] if sp else ["-", "-"]
        row += [pm(s["epoch_s"], 1), pm(s["train_img_per_s"], 1), fmt(s["img_per_s_ratio_vs_" + base], 2)]
        rows.append(row)
    return [
        "## Summary",
        "",
        markdown_table(header, rows),
        "",
        f"GFLOPs at imgsz {args.imgsz}, unfused. s/epoch includes the per-epoch validation; train img/s counts the "
        "training phase only. See `yolo-tood compare --help` for the exact definitions.",
        "",
    ]


def _per_class_lines(labels: list[str], summary: dict, splits: list[str]) -> list[str]:
    """One per-class AP table per split."""
    out = []
    for split in splits:
        classes = sorted({c for label in labels for c in summary[label]["splits"].get(split, {}).get("per_class", {})})
        if not classes:
            continue
        out += [f"## Per-class AP (mAP50-95), {split}", ""]
        rows = [[c] + [pm(summary[lb]["splits"].get(split, {}).get("per_class", {}).get(c)) for lb in labels]
                for c in classes]  # fmt: skip
        out += [markdown_table(["class", *labels], rows), ""]
    return out


def _paired_lines(labels: list[str], summary: dict, splits: list[str]) -> list[str]:
    """The paired differences of each model against the first, seed by seed and as mean ± std."""
    base = labels[0]
    paired = {label: summary[label].get("paired_vs_" + base, {}) for label in labels[1:]}
    if not any(paired.values()):
        return []
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
    return [f"## Paired differences vs {base} (mAP50-95 points, same seeds)", "", markdown_table(header, rows), ""]


def _per_seed_lines(runs: dict, splits: list[str]) -> list[str]:
    """Each run's mAPs and speed."""
    header = ["model", "seed"] + [f"{sp} {m}" for sp in splits for m in ("mAP50", "mAP50-95")]
    header += ["s/epoch", "train img/s", "train wall (s)"]
    rows = []
    for label, by_seed in runs.items():
        for seed, r in by_seed.items():
            row = [label, str(seed)]
            for split in splits:
                v = r["val"].get(split)
                row += [f"{v['map50']:.3f}", f"{v['map']:.3f}"] if v else ["-", "-"]
            sp = r["speed"]
            row += [f"{sp['epoch_s']:.1f}", f"{sp['train_img_per_s']:.1f}", f"{sp['wall_s']:.0f}"]
            rows.append(row)
    return ["## Per seed", "", markdown_table(header, rows), ""]


def _curve_lines(base: str, gaps: dict) -> list[str]:
    """The epochs where each model's mean val curve is more than a point below the first model's."""
    rows = [
        [
            label,
            ", ".join(map(str, g["below"])) or "none",
            "-" if g["worst"] is None else f"{100 * g['worst']:+.1f} (epoch {g['worst_epoch']})",
            f"{g['seeds'][1]} / {g['seeds'][0]}",
        ]
        for label, g in gaps.items()
    ]
    return [
        f"## Val curve against {base}",
        "",
        f"Val mAP50-95 per epoch, mean over seeds, compared with {base}'s from epoch {CURVE_AFTER + 1} on: the "
        f"epochs more than 1 point below it and the largest deficit.",
        "",
        markdown_table(["model", "epochs > 1 point below", "worst (points)", "seeds (model / base)"], rows),
        "",
    ]


def _alignment_lines(args: argparse.Namespace, runs: dict, splits: list[str]) -> list[str]:
    """The task-alignment tables of every run, per split (and at an equal budget where every run has one)."""
    from ultralytics.cfg import DEFAULT_CFG  # compare's alignment runs keep the validator's NMS IoU and max_det

    out = [
        "## Task alignment (TOOD paper Table 7 analysis)",
        "",
        f"Pre-NMS PCC top-50 and IoU top-10; post-NMS counts at conf {args.align_conf}, NMS IoU {DEFAULT_CFG.iou}, "
        f"max_det {DEFAULT_CFG.max_det} "
        "(definitions: yolo_tood/tools/analysis/alignment.py). mAP50-95 at the validator's conf 0.001.",
        "",
    ]
    for split in splits:
        results = {
            f"{label} s{seed}": AlignmentResult(**r["alignment"][split])
            for label, by_seed in runs.items()
            for seed, r in by_seed.items()
            if split in r.get("alignment", {})
        }
        if results:
            out += [f"### {split}", "", alignment_table(results), ""]
            if all(r.budget for r in results.values()):
                out += ["Equal budget: each model's threshold leaves as many detections as objects.", ""]
                out += [alignment_table(results, budget=True), ""]
    return out


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
