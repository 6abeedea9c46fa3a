"""Parity of exported TOOD models with PyTorch: ONNX (onnxruntime) and TorchScript, raw outputs and `yolo predict`.

1. Raw outputs: the (1, 4 + nc, A) tensor of the fused PyTorch model against onnxruntime on one dynamic ONNX file and
   against TorchScript files traced at each size, on real images at two input sizes (plain resize, same tensor to
   all). Reports the max |diff| of scores and of boxes (pixels) per backend and size; the targets are 1e-4 and 1e-2 px.
2. End to end: the stock ``yolo predict`` command on ``best.pt`` and on ``best.onnx`` (exported as
   ``yolo export model=best.pt format=onnx``), with ``save_txt save_conf``; the label files must list the same
   detections (same classes, boxes and confidences to the printed precision).

Without ``--weights``, trains a TOOD yolov8n for 2 epochs at imgsz 64 on coco128 first (a few minutes on a CPU), so
that the scores and boxes are those of a trained model rather than of the 0.01 prior.

Usage:
    python scripts/export_parity.py --weights runs/detect/train/weights/best.pt --sizes 320 640
    python scripts/export_parity.py            # trains the small checkpoint first
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from yolo_tood.data import shared_datasets

ROOT = Path(__file__).resolve().parents[1]
DATASETS = shared_datasets(ROOT)  # $YOLO_TOOD_SHARED/datasets, default ../shared relative to the repo
IMAGE_DIRS = (DATASETS / "coco128" / "images" / "train2017", DATASETS / "bccd" / "images" / "test")


def train_small(workdir: Path) -> Path:
    """Train TOOD yolov8n for 2 epochs at imgsz 64 on coco128 (local YAML, no download); return best.pt."""
    from ultralytics import YOLO

    YOLO(ROOT / "cfg" / "yolov8n-tood.yaml").train(
        data=str(DATASETS / "coco128" / "coco128.yaml"),
        epochs=2,
        imgsz=64,
        batch=16,
        workers=0,
        device="cpu",
        project=str(workdir),
        name="train",
        plots=False,
        amp=False,
        verbose=False,
    )
    return workdir / "train" / "weights" / "best.pt"


def load_image(path: Path, size: int) -> torch.Tensor:
    """Return the image as a (1, 3, size, size) RGB float tensor in [0, 1]."""
    import cv2

    im = cv2.resize(cv2.imread(str(path)), (size, size))[:, :, ::-1].transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(im)).float()[None] / 255


def export(weights: Path, workdir: Path, name: str, **kwargs) -> Path:
    """Export a copy of ``weights`` named ``name`` (the exporter writes next to the .pt) and return the file."""
    from ultralytics import YOLO

    pt = workdir / f"{name}.pt"
    shutil.copy(weights, pt)
    return Path(YOLO(pt).export(verbose=False, **kwargs))


def raw_parity(weights: Path, images: list[Path], sizes: list[int], workdir: Path) -> list[tuple]:
    """Return rows (backend, size, max |diff| scores, max |diff| boxes px, score range) over ``images``."""
    import onnxruntime as ort
    from ultralytics import YOLO

    model = YOLO(weights).model.float().eval().fuse(verbose=False)
    onnx_file = export(weights, workdir, "dynamic", format="onnx", imgsz=max(sizes), dynamic=True, simplify=True)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    rows = []
    for size in sizes:
        ts = torch.jit.load(str(export(weights, workdir, f"ts{size}", format="torchscript", imgsz=size)))
        diffs = {"onnx": [0.0, 0.0], "torchscript": [0.0, 0.0]}
        smax = 0.0
        for image in images:
            x = load_image(image, size)
            with torch.inference_mode():
                ref = model(x)[0].numpy()
                outs = {"onnx": session.run(None, {session.get_inputs()[0].name: x.numpy()})[0], "torchscript": ts(x)}
            smax = max(smax, float(ref[:, 4:].max()))
            for k, out in outs.items():
                out = np.asarray(out)
                diffs[k][0] = max(diffs[k][0], float(np.abs(ref[:, 4:] - out[:, 4:]).max()))
                diffs[k][1] = max(diffs[k][1], float(np.abs(ref[:, :4] - out[:, :4]).max()))
        rows += [(k, size, *d, smax) for k, d in diffs.items()]
    return rows


def predict_labels(model: Path, source: Path, out: Path, args: list[str]) -> dict[str, np.ndarray]:
    """Run the stock ``yolo predict`` CLI with save_txt/save_conf; return {image stem: (N, 6) label rows}."""
    yolo = Path(sys.executable).with_name("yolo")
    cmd = [str(yolo) if yolo.exists() else "yolo", "predict", f"model={model}", f"source={source}", *args]
    cmd += ["save_txt=True", "save_conf=True", "save=False", f"project={out}", "name=pred", "exist_ok=True"]
    subprocess.run(cmd, check=True, capture_output=True)
    return {f.stem: np.loadtxt(f, ndmin=2) for f in sorted((out / "pred" / "labels").glob("*.txt"))}


def compare_labels(pt: dict[str, np.ndarray], on: dict[str, np.ndarray], tol: float = 1e-3) -> dict:
    """Match each .pt detection (class, x, y, w, h, conf) to the nearest .onnx one of its class; summarise."""
    res = {"detections": sum(len(v) for v in pt.values()), "unmatched": 0, "box": 0.0, "score": 0.0}
    res["same_count"] = all(len(pt.get(k, ())) == len(on.get(k, ())) for k in set(pt) | set(on))
    for k, rows in pt.items():
        other = on.get(k, np.zeros((0, 6)))
        for r in rows:
            cand = other[other[:, 0] == r[0]]
            d = np.abs(cand[:, 1:5] - r[1:5]).max(1) if len(cand) else np.array([np.inf])
            j = int(d.argmin())
            if d[j] > tol:  # normalised units: 1e-3 is 0.6 px at 640
                res["unmatched"] += 1
            else:
                res["box"], res["score"] = max(res["box"], float(d[j])), max(res["score"], abs(cand[j, 5] - r[5]))
    return res


def predict_parity(weights: Path, images: list[Path], workdir: Path, conf: float, imgsz: int) -> dict[str, dict]:
    """Compare ``yolo predict`` of the .pt and of ONNX exports on ``images``; return a summary per variant.

    Variants: the default export (static 640x640 input) with ``rect=False``, so that both letterbox to the same
    square input; a ``dynamic=True`` export with predict's default rectangular letterbox, as the .pt gets it; and,
    for information, the default export with the default ``rect``, where the .pt sees a rectangular letterbox and
    the static ONNX a square one (different inputs: TOOD's GroupNorm and layer attention pool over the whole map,
    padding included, so every score moves a little, not only those near the border).
    """
    source = workdir / "images"
    source.mkdir(exist_ok=True)
    for image in images:
        shutil.copy(image, source / image.name)
    static = export(weights, workdir, "best", format="onnx", imgsz=imgsz)
    dynamic = export(weights, workdir, "best_dynamic", format="onnx", imgsz=imgsz, dynamic=True)
    common = [f"conf={conf}", f"imgsz={imgsz}"]
    variants = {
        "static ONNX, rect=False": (static, ["rect=False"]),
        "dynamic ONNX, default rect": (dynamic, []),
        "static ONNX, default rect (inputs differ)": (static, []),
    }
    out = {}
    for i, (name, (onnx_file, extra)) in enumerate(variants.items()):
        pt = predict_labels(workdir / "best.pt", source, workdir / f"pt{i}", common + extra)
        on = predict_labels(onnx_file, source, workdir / f"onnx{i}", common + extra)
        out[name] = compare_labels(pt, on)
    return out


def main() -> None:
    """Parse the command line, run both parity checks and print markdown tables."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", type=Path, help="TOOD checkpoint; default: train a small one first")
    ap.add_argument("--sizes", type=int, nargs=2, default=[320, 640], help="two input sizes for the raw parity")
    ap.add_argument("--images", type=int, default=8, help="images per dataset (coco128 train2017, bccd test)")
    ap.add_argument("--conf", type=float, default=0.05, help="confidence threshold of the predict comparison")
    ap.add_argument("--imgsz", type=int, default=640, help="export and predict size of the predict comparison")
    args = ap.parse_args()
    torch.set_num_threads(2)
    images = [p for d in IMAGE_DIRS for p in sorted(d.glob("*.jpg"))[: args.images]]
    if not images:
        sys.exit(f"no images under {DATASETS}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = args.weights or train_small(tmp)
        rows = raw_parity(weights, images, args.sizes, tmp)
        pred = predict_parity(weights, images, tmp, args.conf, args.imgsz)

    print(f"\nRaw output parity vs PyTorch, {len(images)} images ({weights}):\n")
    print("| backend | size | max abs diff scores | max abs diff boxes (px) | max score |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for backend, size, ds, db, smax in rows:
        print(f"| {backend} | {size} | {ds:.2e} | {db:.2e} | {smax:.3f} |")
    print(f"\n`yolo predict` .pt vs .onnx, imgsz {args.imgsz}, conf {args.conf}, {len(images)} images:\n")
    print(
        "| variant | .pt detections | same count per image | .pt detections without an .onnx twin | "
        "max abs diff xywh (normalised) | max abs diff conf |"
    )
    print("| --- | ---: | --- | ---: | ---: | ---: |")
    for name, r in pred.items():
        print(
            f"| {name} | {r['detections']} | {r['same_count']} | {r['unmatched']} | {r['box']:.1e} | {r['score']:.1e} |"
        )
    print("\nA twin: same class, box within 1e-3 (normalised); label files print 6 decimals.")
    exact = [r for name, r in pred.items() if "differ" not in name]
    ok = all(ds <= 1e-4 and db <= 1e-2 for _, _, ds, db, _ in rows)
    ok = ok and all(r["same_count"] and not r["unmatched"] for r in exact)
    print("\nPASS" if ok else "\nFAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
