"""The main job on an embedded default: train YOLOv8n-TOOD on generated data, validate, predict, say where it all is.

Run ``python -m yolo_tood.demo`` (no network, no dataset needed). It uses only the stock ultralytics trainer,
validator and predictor; the TOOD head is picked up from the model YAML.

The defaults are chosen to learn visibly in about two minutes on two CPU cores: 192 generated 256 px images of
non-overlapping shapes, each class in its own colour, trained at 128 px for 12 epochs (a third of them ATSS warm-up,
as the paper's 4 of 12), SGD at lr0 0.01 with one optimizer step per batch of 8 (``nbs=batch``: ultralytics' default
nbs=64 would accumulate 8 batches per step, leaving too few steps for so short a run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from yolo_tood.paths import CFG_DIR

DEMO = {"train_images": 192, "val_images": 32, "optimizer": "SGD", "lr0": 0.01, "conf": 0.25}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The demo's command line (``python -m yolo_tood.demo --help``)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/tood_demo", help="output directory (data and runs)")
    parser.add_argument("--family", default="yolov8", help="model family with a yolo_tood/cfg/{family}-tood.yaml")
    parser.add_argument("--scale", default="n", choices=list("nsmlx"))
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--train-images", type=int, default=DEMO["train_images"])
    parser.add_argument("--val-images", type=int, default=DEMO["val_images"])
    parser.add_argument("--atss-epochs", type=int, default=None, help="ATSS warm-up epochs (default: a third)")
    parser.add_argument("--optimizer", default=DEMO["optimizer"])
    parser.add_argument("--lr0", type=float, default=DEMO["lr0"])
    parser.add_argument("--conf", type=float, default=DEMO["conf"], help="confidence of the prediction images")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train, validate and predict; return the validation metrics and output paths.

    Args:
        argv (list[str], optional): Command-line arguments; see ``--help``.

    Returns:
        (dict): ``map50``, ``map50_95``, ``weights``, ``predictions``, ``run_dir`` and ``val_dir``.
    """
    from ultralytics import YOLO

    from yolo_tood.data import make_shapes_dataset

    args = parse_args(argv)
    out = Path(args.out).resolve()
    data = make_shapes_dataset(
        out / "shapes", args.train_images, args.val_images, imgsz=2 * args.imgsz, size=(1 / 10, 1 / 5),
        max_objects=3, class_colors=True,
    )  # fmt: skip
    model = YOLO(str(model_yaml(args, out)))
    model.train(
        data=str(data), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device=args.device, workers=0,
        optimizer=args.optimizer, nbs=args.batch, lr0=args.lr0, project=str(out), name="train", exist_ok=True,
    )  # fmt: skip
    run_dir = Path(model.trainer.save_dir)
    best = run_dir / "weights" / "best.pt"
    trained = YOLO(str(best))
    metrics = trained.val(
        data=str(data), imgsz=args.imgsz, batch=args.batch, device=args.device, workers=0, project=str(out),
        name="val", exist_ok=True,
    )  # fmt: skip
    pred_dir = predict_examples(trained, args, out)
    summary = {
        "map50": float(metrics.box.map50),
        "map50_95": float(metrics.box.map),
        "weights": str(best),
        "predictions": str(pred_dir),
        "run_dir": str(run_dir),
        "val_dir": str(out / "val"),  # project/name, as ultralytics names its run directories
    }
    print(
        f"\nyolo-tood demo done: val mAP50 {summary['map50']:.3f}, mAP50-95 {summary['map50_95']:.3f}\n"
        f"  training run (results.csv, plots): {run_dir}\n  weights: {best}\n"
        f"  validation plots (PR curve, confusion matrix): {summary['val_dir']}\n  predicted images: {pred_dir}"
    )
    return summary


def model_yaml(args: argparse.Namespace, out: Path) -> Path:
    """Write the packaged TOOD YAML under a scaled name (as ultralytics' own yolov8n.yaml), with ``--atss-epochs``."""
    cfg = yaml.safe_load((CFG_DIR / f"{args.family}-tood.yaml").read_text())
    if args.atss_epochs is not None:  # else the default: a third of the epochs (atss_fraction)
        cfg["atss_epochs"] = args.atss_epochs
    path = out / f"{args.family}{args.scale}-tood.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def predict_examples(model, args: argparse.Namespace, out: Path) -> Path:
    """Predict the four validation images with the most shapes (ties by name), so the saved images show several
    classes; return the folder of the drawn predictions."""
    val_images = sorted((out / "shapes" / "images" / "val").glob("*.jpg"))
    labels = out / "shapes" / "labels" / "val"
    count = {p: len((labels / f"{p.stem}.txt").read_text().splitlines()) for p in val_images}
    images = sorted(val_images, key=lambda p: -count[p])[:4]
    results = model.predict(
        [str(p) for p in images], imgsz=args.imgsz, conf=args.conf, device=args.device, save=True, project=str(out),
        name="predict", exist_ok=True,
    )  # fmt: skip
    return Path(results[0].save_dir) if results else out / "predict"


if __name__ == "__main__":
    main()
