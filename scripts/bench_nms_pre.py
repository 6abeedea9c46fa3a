"""Measure the pre-NMS bound of TOOD / TAP checkpoints: mAP and postprocess time, bound off, per image, per level.

Usage:
    python scripts/bench_nms_pre.py --data $YOLO_TOOD_SHARED/datasets/bccd/bccd.yaml --imgsz 320 \
        --weights tood=runs/ft/tood_s0/weights/best.pt tap=runs/ft/tap_s0/weights/best.pt \
        --stock runs/ft/stock_s0/weights/best.pt --out runs/nms_pre_bccd.json

Each checkpoint is validated (ultralytics' validator, conf 0.001, IoU 0.7, max_det 300, batch 1 so that ultralytics'
NMS time limit, 2 s + 0.05 s per image of the batch, is never the cut) with its head's ``nms_pre`` set to 0 (no
bound), ``--k`` per image (``nms_pre_mode="image"``) and ``--k`` per level (``"level"``, MMDetection's ``nms_pre``).
The stock checkpoint, when given, is validated once as the postprocess-time reference. Prints a markdown table and
writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yolo_tood  # noqa: F401  registers the heads so TOOD / TAP checkpoints load
from yolo_tood.tools.analysis.nms_guard import NMSTimeLimitGuard


def validate(weights: str, data: str, imgsz: int, split: str, nms_pre: int | None, mode: str) -> dict:
    """Validate one checkpoint with its head's bound set (None: a stock head, nothing to set)."""
    from ultralytics import YOLO

    model = YOLO(weights)
    head = model.model.model[-1]
    if nms_pre is not None:
        head.nms_pre, head.nms_pre_mode = nms_pre, mode
    with NMSTimeLimitGuard() as guard:
        m = model.val(data=data, imgsz=imgsz, batch=1, split=split, plots=False, verbose=False, workers=0)
    return {
        "map50": float(m.box.map50),
        "map50_95": float(m.box.map),
        "postprocess_ms": float(m.speed["postprocess"]),
        "inference_ms": float(m.speed["inference"]),
        "nms_time_limit_hits": guard.hits,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="detection data YAML")
    ap.add_argument("--weights", nargs="+", required=True, help="name=checkpoint of TOOD / TAP models")
    ap.add_argument("--stock", default=None, help="a stock checkpoint, the postprocess-time reference")
    ap.add_argument("--imgsz", type=int, default=320)
    ap.add_argument("--split", default="val")
    ap.add_argument("--k", type=int, default=1000, help="the bound: candidates per image or per level")
    ap.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    args = ap.parse_args(argv)
    rows = {}
    if args.stock:
        rows["stock"] = validate(args.stock, args.data, args.imgsz, args.split, None, "image")
    for spec in args.weights:
        name, sep, path = spec.partition("=")
        if not sep or not Path(path).is_file():
            raise SystemExit(f"bench_nms_pre.py: --weights wants name=checkpoint, got {spec!r}")
        for label, k, mode in (("off", 0, "image"), ("per image", args.k, "image"), ("per level", args.k, "level")):
            rows[f"{name} {label}"] = validate(path, args.data, args.imgsz, args.split, k, mode)
    print(f"\n| model, bound (k = {args.k}) | mAP50 | mAP50-95 | postprocess ms/img | inference ms/img | NMS cut |")
    print("|---|---|---|---|---|---|")
    for label, r in rows.items():
        print(
            f"| {label} | {r['map50']:.4f} | {r['map50_95']:.4f} | {r['postprocess_ms']:.1f} | "
            f"{r['inference_ms']:.1f} | {r['nms_time_limit_hits']} |"
        )
    result = {"data": args.data, "imgsz": args.imgsz, "split": args.split, "k": args.k, "rows": rows}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
