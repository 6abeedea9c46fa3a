"""``yolo-tood compare``'s runs: train one (model, seed) with the shared recipe, cache its record, validate, cost."""

from __future__ import annotations

import argparse
import csv
import json
import time
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch

from yolo_tood.tools.analysis.nms_guard import NMSTimeLimitGuard, run_with_batch1_retry
from yolo_tood.tools.analysis.report import (
    json_clean,
)
from yolo_tood.train.tal_stats import PLOT_FILE, STATS_FILE, plot_tal_stats

RUN_RECORD = "compare_run.json"  # written into a run dir once its training has finished

MAP_COLUMN = "metrics/mAP50-95(B)"


def file_sha256(path: Path) -> str:
    """Return the SHA-256 hex digest of a file's bytes (a checkpoint's identity in a compare recipe)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
    if stats.is_file() and not model.trainer.args.plots:  # a TOOD run; with plots=True the plug-in drew it
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


NMS_FREE = "_nms_free"  # suffix of a split validated on an end-to-end model's NMS-free branch (val_nms_free)


def nms_free_splits(splits: list[str]) -> list[str]:
    """The NMS-free counterparts of ``splits`` (``val`` -> ``val_nms_free``), validated with ``nms=False``."""
    return [f"{split}{NMS_FREE}" for split in splits]


def is_end_to_end(weights: Path) -> bool:
    """Whether a checkpoint's head has a one-to-one branch (YOLO26's ``end2end``), i.e. an NMS-free path."""
    from ultralytics import YOLO

    return getattr(YOLO(str(weights)).model.model[-1], "one2one_cv2", None) is not None


def validate_run(
    weights: Path, data: str, split: str, args: argparse.Namespace, val_dir: Path, name: str
) -> dict[str, Any]:
    """Validate a checkpoint on one split and return mAP50, mAP50-95 and per-class mAP50-95.

    Args:
        weights (Path): Checkpoint.
        data (str): Dataset YAML.
        split (str): ``val`` or ``test``; ``val_nms_free`` / ``test_nms_free`` validate that split with ``nms=False``
            (an end-to-end model's one-to-one branch, no NMS).
        args (argparse.Namespace): Script arguments (imgsz, batch, device).
        val_dir (Path): Project directory of the validation runs.
        name (str): Run name.

    Returns:
        (dict[str, Any]): ``map50``, ``map``, ``per_class`` (class name -> mAP50-95, classes with labels only).
    """
    from ultralytics import YOLO

    nms_free = split.endswith(NMS_FREE)

    def val(batch: int):
        return YOLO(str(weights)).val(
            data=data,
            split=split.removesuffix(NMS_FREE),
            nms=False if nms_free else None,
            imgsz=args.imgsz,
            batch=batch,
            device=args.device,
            workers=0,
            plots=True,
            project=str(val_dir),
            name=f"{name}{NMS_FREE}" if nms_free else name,
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
