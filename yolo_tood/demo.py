"""The main job on an embedded default: train YOLOv8n-TOOD on generated data, validate, predict, say where it all is.

Run ``python -m yolo_tood.demo`` (no network, no dataset needed). It uses only the stock ultralytics trainer,
validator and predictor; the TOOD head is picked up from the model YAML.
"""

from __future__ import annotations

import argparse
from pathlib import Path

CFG_DIR = Path(__file__).parent / "cfg"


def main(argv: list[str] | None = None) -> dict:
    """Train, validate and predict; return the validation metrics and output paths.

    Args:
        argv (list[str], optional): Command-line arguments; see ``--help``.

    Returns:
        (dict): ``map50``, ``map50_95``, ``weights``, ``predictions`` and ``run_dir``.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/tood_demo", help="output directory (data and runs)")
    parser.add_argument("--family", default="yolov8", help="model family with a yolo_tood/cfg/{family}-tood.yaml")
    parser.add_argument("--scale", default="n", choices=list("nsmlx"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    from ultralytics import YOLO

    from yolo_tood.data import make_shapes_dataset

    out = Path(args.out).resolve()
    data = make_shapes_dataset(out / "shapes", imgsz=args.imgsz)
    model = YOLO(str(CFG_DIR / f"{args.family}{args.scale}-tood.yaml"))
    model.train(
        data=str(data),
        epochs=args.epochs,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        workers=0,
        project=str(out),
        name="train",
        exist_ok=True,
    )
    run_dir = Path(model.trainer.save_dir)
    best = run_dir / "weights" / "best.pt"
    trained = YOLO(str(best))
    metrics = trained.val(data=str(data), imgsz=args.imgsz, batch=args.batch, device=args.device, workers=0)
    images = sorted((out / "shapes" / "images" / "val").glob("*.jpg"))[:4]
    results = trained.predict(
        [str(p) for p in images], imgsz=args.imgsz, device=args.device, save=True, project=str(out), name="predict"
    )
    pred_dir = Path(results[0].save_dir) if results else out / "predict"
    summary = {
        "map50": float(metrics.box.map50),
        "map50_95": float(metrics.box.map),
        "weights": str(best),
        "predictions": str(pred_dir),
        "run_dir": str(run_dir),
    }
    print(
        f"\nyolo-tood demo done: val mAP50 {summary['map50']:.3f}, mAP50-95 {summary['map50_95']:.3f}\n"
        f"  training run (results.csv, plots): {run_dir}\n  weights: {best}\n  predicted images: {pred_dir}"
    )
    return summary


if __name__ == "__main__":
    main()
