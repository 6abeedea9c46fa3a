"""``yolo-tood merge``: one report from several ``compare.json`` files of one recipe (seeds trained apart).

Seeds of one comparison are often trained by separate ``yolo-tood compare`` calls: one per machine or GPU, one per
session, or a seed added later. This command checks that the reports share one recipe (data, epochs, imgsz, batch,
optimizer, learning rate, momentum, workers, device, checkpoint of ``--pretrained``: its path, and its
SHA-256 where both reports recorded one) and that each model name is the
same model YAML in all of them, then writes ``compare.json``, ``compare.md`` and ``compare_map.png`` for the union of
their runs exactly as one ``compare`` call over all seeds would (same summary, tables and curve gaps). Nothing
trains or validates.

A run's val curve comes from its record (``curve``, written by ``compare``) or else from the ``results.csv`` of its
run dir if that still exists; runs without either are left out of the curve plot and gaps, which then say how many
seeds they cover. ``score_iou.png`` is drawn when the alignment pairs of each model's first seed are still on disk.

Usage:
    yolo-tood merge runs/seed0/compare.json runs/seeds12/compare.json --out runs/merged
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from yolo_tood.tools.compare.report import write_report
from yolo_tood.tools.compare.runs import MAP_COLUMN, read_results_csv

SPLIT_ORDER = ("val", "test", "val_nms_free", "test_nms_free")
REPORT_KEYS = ("args", "recipe", "splits", "runs")
# Recipe keys that reports written before them lack: compared only when both reports have them
LATER_RECIPE_KEYS = ("pretrained_sha256",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add merge's arguments to a parser (``yolo-tood merge``)."""
    p.add_argument(
        "reports", type=Path, nargs="+", help="compare.json files (or the --out folders that hold them), one recipe"
    )
    p.add_argument("--out", type=Path, default=Path("runs/merged"), help="output folder (compare.json/.md/_map.png)")


def load_report(path: Path) -> dict[str, Any]:
    """Read one compare.json (``path`` or ``path/compare.json``); raise ValueError naming what is wrong."""
    file = path / "compare.json" if path.is_dir() else path
    if not file.is_file():
        raise ValueError(f"{str(path)!r} is not a compare.json file or a folder holding one")
    try:
        report = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(file)!r} is not JSON ({e})") from None
    missing = [k for k in REPORT_KEYS if not isinstance(report, dict) or k not in report]
    if missing:
        raise ValueError(f"{str(file)!r} is not a yolo-tood compare report (no {', '.join(missing)})")
    report["file"], report["path"] = str(file), str(file.resolve())  # as typed (messages), absolute (merged_from)
    return report


def run_model(record: dict[str, Any]) -> str:
    """The model of a run record: its YAML's file name (folders differ between clones and machines)."""
    return Path(record["recipe"]["cfg"]).name


def _differ(a: dict[str, Any], b: dict[str, Any], key: str) -> bool:
    """Whether two recipes differ in ``key`` (a ``LATER_RECIPE_KEYS`` key missing from either one cannot differ)."""
    if key in LATER_RECIPE_KEYS and (key not in a or key not in b):
        return False
    return a.get(key) != b.get(key)


def merge_runs(reports: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    """Return the union of the reports' runs, model label -> seed -> record, after checking they belong together.

    Args:
        reports (list[dict[str, Any]]): Loaded compare.json contents (``load_report``).

    Returns:
        (dict[str, dict[int, dict[str, Any]]]): Runs by model label (in order of first appearance) and seed (sorted).

    Raises:
        ValueError: A recipe or model family / scale differs, a label names different models (YAML names, or
            parameter counts where the records have them) in two reports, or a (model, seed) run is in two reports.
    """
    first = reports[0]
    where: dict[tuple[str, int], str] = {}
    models: dict[str, str] = {}
    params: dict[str, int] = {}
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    for report in reports:
        name = report["file"]
        keys = {*first["recipe"], *report["recipe"]}
        diff = sorted(k for k in keys if _differ(first["recipe"], report["recipe"], k))
        for key in ("family", "scale"):
            if first["args"].get(key) != report["args"].get(key):
                diff.append(key)
        if diff:
            k = diff[0]
            a, b = (r["recipe"].get(k, r["args"].get(k)) for r in (first, report))
            raise ValueError(f"{name} and {first['file']} differ in {', '.join(diff)} ({k}: {b!r} vs {a!r})")
        for label, seeds in report["runs"].items():
            for seed, record in seeds.items():
                model = run_model(record)
                if models.setdefault(label, model) != model:
                    raise ValueError(f"model {label!r} is {model} in {name} but {models[label]} in another report")
                # one YAML name, two heads: a shipped YAML whose head changed between versions (e.g. its quality)
                count = record.get("cost", {}).get("params")
                if count is not None and params.setdefault(label, count) != count:
                    raise ValueError(
                        f"model {label!r} ({model}) has {count:,} parameters in {name} but {params[label]:,} in "
                        "another report: not the same model"
                    )
                if (label, int(seed)) in where:
                    raise ValueError(f"run {label} seed {seed} is in both {where[label, int(seed)]} and {name}")
                where[label, int(seed)] = name
                runs.setdefault(label, {})[int(seed)] = record
    return {label: dict(sorted(seeds.items())) for label, seeds in runs.items()}


def run_curve(record: dict[str, Any]) -> list[float] | None:
    """A run's val mAP50-95 per epoch: from its record, else from its run dir's results.csv, else None."""
    if record.get("curve"):
        return record["curve"]
    results = Path(record["train"].get("save_dir", "")) / "results.csv"
    return read_results_csv(results).get(MAP_COLUMN) if results.is_file() else None


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Load and check the reports before anything is written: one line naming the first problem."""
    try:
        args.loaded = [load_report(p) for p in args.reports]
        args.runs = merge_runs(args.loaded)
    except ValueError as e:
        parser.error(str(e))
    args.out = args.out.resolve()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Write the merged compare.json, compare.md and compare_map.png into ``--out``; return compare.json's content."""
    reports, runs = args.loaded, args.runs
    args.out.mkdir(parents=True, exist_ok=True)
    splits = [s for s in SPLIT_ORDER if any(s in r["splits"] for r in reports)]
    seeds = sorted({seed for by_seed in runs.values() for seed in by_seed})
    alignment = any(r["args"].get("alignment") for r in reports)
    view = argparse.Namespace(**{**reports[0]["args"], "seeds": seeds, "models": list(runs), "alignment": alignment})
    view.out = args.out
    curves = {label: [c for c in map(run_curve, by_seed.values()) if c is not None] for label, by_seed in runs.items()}
    curves = {label: c for label, c in curves.items() if c}
    envs = [r.get("env") for r in reports]
    env = envs[0] if all(e == envs[0] for e in envs) else envs
    report, text, outputs = write_report(
        view, runs, curves, splits, reports[0]["recipe"], env,
        run_dir=lambda label, seed, record: Path(record["train"].get("save_dir", "")),
        merged_from=[r["path"] for r in reports],
    )  # fmt: skip
    print(text)
    print(f"\nMerged {len(reports)} reports ({sum(map(len, runs.values()))} runs); wrote " + ", ".join(outputs))
    return report
