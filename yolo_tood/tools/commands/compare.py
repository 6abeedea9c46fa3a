r"""``yolo-tood compare``: train stock and TOOD models with one recipe, side by side; compare accuracy, cost, speed.

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
import platform
import sys
from pathlib import Path
from typing import Any

import torch

import yolo_tood  # noqa: F401  registers the TOOD head so TOOD YAMLs and checkpoints load
from yolo_tood.tools.analysis import evaluate_alignment
from yolo_tood.tools.commands.common import check_split, data_yaml, model_yaml_error, parse_and_run
from yolo_tood.tools.compare.models import head_args_help, head_model, model_cfg, model_labels, parse_variant
from yolo_tood.tools.compare.report import write_report
from yolo_tood.tools.compare.runs import (
    MAP_COLUMN,
    NMS_FREE,
    file_sha256,
    has_split,
    is_end_to_end,
    load_record,
    model_cost,
    nms_free_splits,
    read_results_csv,
    save_record,
    speed_of,
    train_run,
    validate_run,
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add compare's arguments to a parser (``yolo-tood compare`` and ``scripts/compare.py``)."""
    p.add_argument("--data", required=True, help="detection data YAML (train, val and optionally test splits)")
    p.add_argument(
        "--models",
        nargs="+",
        default=["stock", "tood"],
        help="stock, tood, tap, a variant such as tood:atss_epochs=0,box_gain=7.5 (TOOD YAML keys and the head's "
        f"YAML args: {head_args_help()}) or tap:tap=none, or model YAML paths",
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
    p.add_argument(
        "--no-plots",
        action="store_true",
        help="train without ultralytics' training plots (labels.jpg, results.png: they need polars)",
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
    from ultralytics.nn.tasks import yaml_model_load

    if yaml_model_load(f"{args.family}{args.scale}.yaml").get("end2end"):  # YOLO26: the NMS-free path as well
        splits += nms_free_splits(splits)
    train_args, recipe = recipe_of(args)
    labels = model_labels(args.models)
    runs: dict[str, dict[int, dict[str, Any]]] = {}
    curves: dict[str, list[list[float]]] = {}
    n_runs = len(labels) * len(args.seeds)
    for i, (label, model) in enumerate(zip(labels, args.models)):
        cfg = model_cfg(model, args.scale, args.out, args.family)
        runs[label], curves[label] = {}, []
        for j, seed in enumerate(args.seeds):
            progress = f"[{i * len(args.seeds) + j + 1}/{n_runs}] {label} seed {seed}"
            record = run_one(args, label, seed, cfg, train_args, recipe, splits, progress)
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


def recipe_of(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return the trainer's arguments shared by every run, and the recipe a run's record and the report are keyed by
    (those arguments, and the ``--pretrained`` checkpoint's SHA-256)."""
    train_args = {
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
        "plots": not args.no_plots,
    }
    recipe = dict(train_args)
    if args.pretrained is not None:  # only when given, so that the records of from-scratch runs stay valid
        train_args["pretrained"] = recipe["pretrained"] = str(args.pretrained.resolve())
        # The checkpoint's content, not only its path: a source retrained at the same path (CPU training is not
        # bit-reproducible across thread counts) makes the cached runs stale and the reports of two sources
        # unmergeable
        recipe["pretrained_sha256"] = file_sha256(args.pretrained)
    return train_args, recipe


def run_one(
    args: argparse.Namespace,
    label: str,
    seed: int,
    cfg: str,
    train_args: dict[str, Any],
    recipe: dict[str, Any],
    splits: list[str],
    progress: str,
) -> dict[str, Any]:
    """Train one (model, seed) unless its cached record has the same recipe, then validate, cost and align it.

    Returns:
        (dict[str, Any]): The run's record (also saved in its folder): recipe, train, val, alignment, cost, speed,
            curve.
    """
    run_dir = args.out / "runs" / f"{label}_s{seed}"
    record = load_record(run_dir)
    if record is None or record.get("recipe") != {**recipe, "cfg": cfg}:
        print(f"\n{progress}: training {cfg} -> {run_dir}")
        record = {"recipe": {**recipe, "cfg": cfg}, "train": train_run(cfg, run_dir, train_args, seed)}
        save_record(run_dir, record)
    else:
        print(f"\n{progress}: {run_dir} already trained, not training again")
    results = read_results_csv(run_dir / "results.csv")
    best = run_dir / "weights" / "best.pt"
    record.setdefault("val", {})
    record.setdefault("alignment", {})
    if "cost" not in record:
        record["cost"] = model_cost(best, args.imgsz)
    for split in splits:
        nms_free = split.endswith(NMS_FREE)
        if nms_free and split not in record["val"] and not is_end_to_end(best):
            continue  # a model without a one-to-one branch has no NMS-free path
        if split not in record["val"]:
            record["val"][split] = validate_run(best, args.data, split, args, args.out / "val", run_dir.name)
        pairs = run_dir / f"score_iou_{split}.pt"  # the score_iou.png data, kept beside the cached record
        if args.alignment and not nms_free and (split not in record["alignment"] or not pairs.exists()):
            res = evaluate_alignment(
                best, args.data, split=split, imgsz=args.imgsz, batch=args.batch, conf=args.align_conf,
                device=args.device, workers=0,
            )  # fmt: skip
            record["alignment"][split] = res.to_dict()
            torch.save(res.score_iou, pairs)
    record["speed"] = speed_of(record["train"], results)
    record["curve"] = results.get(MAP_COLUMN, [])  # so that the report alone can be merged (yolo-tood merge)
    save_record(run_dir, record)  # validation results are cached too
    done = [split for split in splits if split in record["val"]]
    print(f"{progress}: " + ", ".join(f"{split} mAP50-95 {record['val'][split]['map']:.3f}" for split in done))
    return record


if __name__ == "__main__":
    main()
