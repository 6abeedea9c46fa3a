r"""``yolo-tood speed``: end-to-end val and predict latency of trained checkpoints, stock vs TOOD, PyTorch and ONNX.

``scripts/bench_speed.py`` times the forward pass of random models; this command times what a user waits for. For each
checkpoint (same data, same run) it reports ultralytics' per-image preprocess / inference / postprocess milliseconds of

- ``yolo val`` (conf 0.001, multi-label NMS, as the validator) and
- ``yolo predict`` (conf 0.25) on the first ``--images`` images of the split,

for PyTorch and for an ONNX export with NMS embedded (``format=onnx nms=True``), at each ``--batch``, plus the number
of NMS candidates per image (PyTorch: (anchor, class) pairs above conf that enter ultralytics' NMS, counted on the
model's output) and the detections per image above 0.001 / 0.05 / 0.25 after NMS (calibration). Every validation is
guarded against ultralytics' NMS time limit (``yolo_tood.tools.analysis.nms_guard``): a run that hits it is reported
as void.

Models are measured in interleaved order (model A, model B, model A, ...) for ``--repeats`` rounds; tables report
medians. A TOOD checkpoint can be measured as trained and with its pre-NMS bound switched off (``--nms-pre 0``
adds a ``tood@nms_pre=0`` row) to show what the bound changes, mAP included.

Usage:
    yolo-tood speed --data ../shared/datasets/bccd/bccd.yaml --imgsz 320 \
        --weights stock=runs/stock/weights/best.pt tood=runs/tood/weights/best.pt --batch 1 16 --nms-pre 0 \
        --out docs/e2e_bccd.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

import yolo_tood  # noqa: F401  registers the TOOD head so TOOD checkpoints load
from yolo_tood.tools.analysis.nms_guard import NMSTimeLimitGuard
from yolo_tood.tools.commands.common import check_models, check_split, data_yaml, parse_and_run, split_images

THRESHOLDS = (0.001, 0.05, 0.25)


@contextmanager
def count_nms_candidates(conf: float, multi_label: bool):
    """Count, per image, the candidates that enter ultralytics' NMS (wraps ``ultralytics.utils.nms``'s function).

    Yields:
        (list[int]): Filled with one count per image: (anchor, class) pairs above ``conf`` when ``multi_label``
            (the validator), anchors whose best class is above ``conf`` otherwise (the predictor).
    """
    import ultralytics.utils.nms as nms

    original = nms.non_max_suppression
    counts: list[int] = []

    def wrapper(prediction, *args, **kwargs):
        pred = prediction[0] if isinstance(prediction, (list, tuple)) else prediction
        if pred.ndim == 3 and pred.shape[-1] != 6:  # (B, 4 + nc, A); end-to-end outputs are already final
            nc = kwargs.get("nc") or pred.shape[1] - 4
            scores = pred[:, 4 : 4 + nc]  # (B, nc, A)
            c = kwargs.get("conf_thres", args[0] if args else conf)
            n = (scores > c).sum((1, 2)) if multi_label else (scores.amax(1) > c).sum(1)
            counts.extend(int(v) for v in n)
        return original(prediction, *args, **kwargs)

    nms.non_max_suppression = wrapper
    try:
        yield counts
    finally:
        nms.non_max_suppression = original


def load(weights: str, nms_pre: int | None):
    """Return a ``YOLO`` model; for a TOOD checkpoint, with its pre-NMS bound set to ``nms_pre`` when given."""
    from ultralytics import YOLO

    model = YOLO(weights)
    head = getattr(model.model, "model", [None])[-1] if not str(weights).endswith(".onnx") else None
    if nms_pre is not None and head is not None and hasattr(head, "nms_pre"):
        head.nms_pre = nms_pre
    return model


def val_once(model, data: str, split: str, imgsz: int, batch: int, workdir: Path) -> dict[str, Any]:
    """Validate once; return speeds (ms/image), mAP, NMS candidates per image and whether the time limit hit."""
    with NMSTimeLimitGuard() as guard, count_nms_candidates(0.001, multi_label=True) as counts:
        m = model.val(
            data=data,
            split=split,
            imgsz=imgsz,
            batch=batch,
            conf=0.001,
            workers=0,
            device="cpu",
            plots=False,
            verbose=False,
            project=str(workdir),
            name="val",
            exist_ok=True,
        )
    return {
        "speed": dict(m.speed),
        "map": float(m.box.map),
        "map50": float(m.box.map50),
        "candidates": statistics.mean(counts) if counts else None,
        "nms_time_limit_hits": guard.hits,
    }


def predict_once(model, images: list[str], imgsz: int, batch: int) -> dict[str, Any]:
    """Predict at conf 0.25; return speeds (ms/image), candidates per image and detections per image."""
    with NMSTimeLimitGuard() as guard, count_nms_candidates(0.25, multi_label=False) as counts:
        results = model.predict(images, imgsz=imgsz, batch=batch, conf=0.25, device="cpu", verbose=False)
    speed = {k: statistics.mean(r.speed[k] for r in results) for k in results[0].speed}
    return {
        "speed": speed,
        "candidates": statistics.mean(counts) if counts else None,
        "detections": statistics.mean(len(r.boxes) for r in results),
        "nms_time_limit_hits": guard.hits,
    }


def calibration(model, images: list[str], imgsz: int) -> dict[str, float]:
    """Detections per image after NMS above each of ``THRESHOLDS`` (multi-label, max 300), from one predict pass."""
    results = model.predict(
        images, imgsz=imgsz, conf=THRESHOLDS[0], device="cpu", verbose=False, max_det=300, agnostic_nms=False
    )
    return {f"{t:g}": statistics.mean(int((r.boxes.conf > t).sum()) for r in results) for t in THRESHOLDS}


def export_onnx(name: str, weights: str, imgsz: int, batch: int, workdir: Path, nms_pre: int | None) -> str:
    """Export a checkpoint to ONNX with NMS embedded (``format=onnx nms=True``), static input of ``batch`` images.

    The copy is named after the model's row (checkpoints are all called best.pt), so exports never overwrite each other.
    """
    import re
    import shutil

    target = workdir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}_b{batch}.pt"
    shutil.copy(weights, target)
    model = load(str(target), nms_pre)
    return model.export(format="onnx", imgsz=imgsz, batch=batch, nms=True, simplify=True, verbose=False)


def med(runs: list[dict], *keys: str) -> float | None:
    """Median of a nested value over repeated runs."""
    vals = []
    for r in runs:
        v = r
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        if v is not None:
            vals.append(v)
    return statistics.median(vals) if vals else None


def table(results: dict, batches: list[int], formats: list[str]) -> str:
    """Markdown: one row per (mode, format, batch, model) with ms per image, candidates and the ratio to stock."""
    lines = [
        "| mode | format | batch | model | pre ms | inference ms | post ms | total ms | ratio to stock "
        "| NMS candidates/img | mAP50-95 | time limit hit |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode in ("val", "predict"):
        for fmt in formats:
            for b in batches:
                rows = {k: v for k, v in results.items() if (mode, fmt, b) == (v["mode"], v["format"], v["batch"])}
                stock_total = None
                for r in rows.values():
                    total = sum(med(r["runs"], "speed", k) or 0 for k in ("preprocess", "inference", "postprocess"))
                    r["total_ms"] = total
                    if r["model"] == "stock":
                        stock_total = total
                for r in rows.values():
                    ratio = f"{r['total_ms'] / stock_total:.2f}" if stock_total else "-"
                    cand = med(r["runs"], "candidates")
                    m = med(r["runs"], "map")
                    hits = sum(x.get("nms_time_limit_hits", 0) for x in r["runs"])
                    lines.append(
                        f"| {mode} | {fmt} | {b} | {r['model']} | {med(r['runs'], 'speed', 'preprocess'):.1f} "
                        f"| {med(r['runs'], 'speed', 'inference'):.1f} | {med(r['runs'], 'speed', 'postprocess'):.1f} "
                        f"| {r['total_ms']:.1f} | {ratio} | {'-' if cand is None else f'{cand:.0f}'} "
                        f"| {'-' if m is None else f'{m:.4f}'} | {'VOID: ' + str(hits) if hits else 'no'} |"
                    )
    return "\n".join(lines)


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """Add the speed arguments to a parser."""
    ap.add_argument(
        "--weights", nargs="+", required=True, help="name=checkpoint pairs; the one named 'stock' is the reference"
    )
    ap.add_argument("--data", required=True, help="detection data YAML")
    ap.add_argument("--split", default="val", help="split validated, and whose first images are predicted")
    ap.add_argument("--imgsz", type=int, default=320, help="inference image size")
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes, one table block each")
    ap.add_argument("--formats", nargs="+", default=["pytorch", "onnx"], choices=["pytorch", "onnx"], help="runtimes")
    ap.add_argument("--images", type=int, default=32, help="images for predict and calibration")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds; tables report medians")
    ap.add_argument("--nms-pre", type=int, nargs="*", default=[], help="extra TOOD rows with head.nms_pre set")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", default="", help="also write the table to this .md file (and the figures as .json)")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the data YAML and split and every name=checkpoint pair before any model loads or exports."""
    check_split(parser, args.data, data_yaml(parser, args.data), args.split)
    bad = [w for w in args.weights if "=" not in w or not w.split("=", 1)[0]]
    if bad:
        parser.error(f"argument --weights: {bad[0]!r} is not name=checkpoint")
    names = [w.split("=", 1)[0] for w in args.weights]
    if len(set(names)) != len(names):
        parser.error(f"argument --weights: repeated names in {names}")
    check_models(parser, "--weights", [w.split("=", 1)[1] for w in args.weights])
    for flag, value in (("--images", args.images), ("--repeats", args.repeats), ("--threads", args.threads)):
        if value < 1:
            parser.error(f"argument {flag}: must be >= 1, got {value}")


def main(argv: list[str] | None = None) -> dict:
    """Parse and check the arguments, then ``run``."""
    return parse_and_run(sys.modules[__name__], "speed", argv)


def measure_once(
    results: dict[str, Any],
    model: Any,
    name: str,
    fmt: str,
    batch: int,
    args: argparse.Namespace,
    images: list[str],
    tmp: Path,
) -> None:
    """Time one validation and one prediction of ``model`` and append them to ``results`` under their keys."""
    for mode in ("val", "predict"):
        rec = results.setdefault(
            f"{mode}/{fmt}/{batch}/{name}", {"mode": mode, "format": fmt, "batch": batch, "model": name, "runs": []}
        )
        if mode == "val":
            rec["runs"].append(val_once(model, args.data, args.split, args.imgsz, batch, tmp))
        else:
            rec["runs"].append(predict_once(model, images, args.imgsz, batch))


def run(args: argparse.Namespace) -> dict:
    """Run the interleaved measurements, print and write the tables."""
    torch.set_num_threads(args.threads)

    weights = dict(w.split("=", 1) for w in args.weights)
    variants = [(name, path, None) for name, path in weights.items()]
    for n in args.nms_pre:
        variants += [(f"{name}@nms_pre={n}", path, n) for name, path in weights.items() if name != "stock"]
    images = [str(f) for f in split_images(args.data, args.split, args.images)]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        onnx_files = {
            (name, b): export_onnx(name, path, args.imgsz, b, tmp, nms_pre)
            for name, path, nms_pre in (variants if "onnx" in args.formats else [])
            for b in args.batch
        }
        for r in range(args.repeats):
            order = variants if r % 2 == 0 else variants[::-1]  # interleaved, alternating the order
            for fmt, b, (name, path, nms_pre) in itertools.product(args.formats, args.batch, order):
                model = load(path if fmt == "pytorch" else onnx_files[(name, b)], nms_pre)
                measure_once(results, model, name, fmt, b, args, images, tmp)
        calib = {name: calibration(load(path, nms_pre), images, args.imgsz) for name, path, nms_pre in variants}

    md = [
        f"data {args.data} split {args.split}, imgsz {args.imgsz}, {args.threads} torch threads, "
        f"median of {args.repeats} interleaved repeats; predict on {len(images)} images",
        "",
        table(results, args.batch, args.formats),
        "",
        "Detections per image after NMS (PyTorch, multi-label, max 300) above each score:",
        "",
        "| model | " + " | ".join(f"> {t:g}" for t in THRESHOLDS) + " |",
        "|---|" + "---|" * len(THRESHOLDS),
        *(f"| {n} | " + " | ".join(f"{c[f'{t:g}']:.1f}" for t in THRESHOLDS) + " |" for n, c in calib.items()),
    ]
    text = "\n".join(md)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps({"results": results, "calibration": calib}))
    return {"results": results, "calibration": calib}


if __name__ == "__main__":
    main()
