"""The checks that need a CUDA GPU, in one run: train stock / TOOD / TAP with AMP, time them, export, compare in ONNX.

Run by ``scripts/gpu_check.sh run`` on a machine with a CUDA device (never in CI). On a machine without one it says
so and exits 0 (``--device cpu`` runs the same steps on the CPU at a tiny size, as a smoke test of this script).

First the heads' cost against stock, on random-weight models: the kernel launches and host syncs of
``scripts/bench_launches.py`` (counted on the CPU), and the fused forward's median milliseconds at batch 1 and 32
(fp16) of each ``--cost-models`` entry (yolov8n, yolov8s, yolo26n; YOLO26 NMS-free and with NMS) for stock, tap and
tood. ``--cost-only`` stops there (a short device slot). Then, each model a yolov8n (``stock``: ultralytics'
yolov8n.yaml; ``tood``: yolov8n-tood.yaml; ``tap``: yolov8n-tap.yaml) trained from scratch with the same recipe:
1. train with AMP (fp16) and ultralytics' default ``deterministic=True``, plus one TAP run with ``deterministic=False``
   (``grid_sample``'s CUDA backward has no deterministic kernel: with ``True`` torch only warns, ultralytics #25965);
2. per run: every logged training loss finite, the final val mAP50-95, train images/s (training phase only, between
   the epoch callbacks) and its ratio to stock's;
3. the fp16 forward latency of each fused model at batch 1 and 32, median of interleaved rounds, ratio to stock's;
4. ONNX export of each GPU-trained ``best.pt`` (ultralytics' exporter, on the CPU) and onnxruntime parity against the
   PyTorch CPU forward of the same checkpoint on one image.

Everything lands in one JSON (``--json``), which docs/evidence.md's GPU figures come from.

Usage:
    python scripts/gpu_check.py --data .gpu/road_traffic/road_traffic.yaml --json $OUT/gpu_check.json
    python scripts/gpu_check.py --device cpu --data runs/shapes/data.yaml --epochs 1 --imgsz 64 --batch 4 --json x.json
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import yolo_tood  # noqa: F401  (registers the heads: on the GPU machine the start-up hook is not installed)

MODELS = {"stock": "yolov8n.yaml", "tood": "yolov8n-tood.yaml", "tap": "yolov8n-tap.yaml"}
COST_MODELS = ("yolov8n", "yolov8s", "yolo26n")  # forward_cost's models, random weights


def _load_bench_launches():
    """``scripts/bench_launches.py`` as a module (scripts/ is not a package): its model builder and launch table."""
    spec = importlib.util.spec_from_file_location("bench_launches", Path(__file__).with_name("bench_launches.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_launches"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


BENCH = _load_bench_launches()
LOSS_COLUMNS = ("train/box_loss", "train/cls_loss", "train/dfl_loss")


def train_one(name: str, cfg: str, args: argparse.Namespace, deterministic: bool = True) -> dict[str, Any]:
    """Train one model; return its final val mAP50-95, whether every logged loss is finite, and train images/s."""
    from ultralytics import YOLO

    yolo = YOLO(cfg)
    phase: dict[str, float] = {"seconds": 0.0, "start": 0.0}

    def epoch_start(trainer):
        _sync(args.device)
        phase["start"] = time.perf_counter()

    def epoch_end(trainer):
        _sync(args.device)
        phase["seconds"] += time.perf_counter() - phase["start"]
        phase["images"] = len(trainer.train_loader.dataset)

    yolo.add_callback("on_train_epoch_start", epoch_start)
    yolo.add_callback("on_train_epoch_end", epoch_end)
    yolo.train(
        data=args.data, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch, device=args.device, amp=True,
        deterministic=deterministic, workers=args.workers, seed=0, project=str(args.runs), name=name, exist_ok=True,
        plots=False,
    )  # fmt: skip
    rows = list(csv.DictReader(open(Path(yolo.trainer.save_dir) / "results.csv")))
    losses = [float(r[c]) for r in rows for c in LOSS_COLUMNS if c in r]
    return {
        "cfg": cfg,
        "deterministic": deterministic,
        "epochs": len(rows),
        "losses_finite": bool(losses) and all(math.isfinite(v) for v in losses),
        "val_map50_95": float(rows[-1]["metrics/mAP50-95(B)"]),
        "train_img_per_s": phase.get("images", 0) * len(rows) / max(phase["seconds"], 1e-9),
        "best": str(Path(yolo.trainer.save_dir) / "weights" / "best.pt"),
    }


def _sync(device: str) -> None:
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.synchronize()


def _device_dtype(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """The forward timings' device and dtype: fp16 on the GPU, float32 in the CPU smoke test."""
    device = torch.device("cpu" if args.device == "cpu" else f"cuda:{args.device}")
    return device, torch.float32 if device.type == "cpu" else torch.float16


def forward_latency_ms(weights: dict[str, str], args: argparse.Namespace, batch: int) -> dict[str, float]:
    """Median forward milliseconds of each fused trained model at ``batch``, fp16 on the GPU, interleaved rounds."""
    from ultralytics import YOLO

    return median_forward_ms({k: YOLO(w).model.eval().fuse(verbose=False) for k, w in weights.items()}, args, batch)


def median_forward_ms(models: dict[str, torch.nn.Module], args: argparse.Namespace, batch: int) -> dict[str, float]:
    """Median forward milliseconds of each fused model at ``batch`` (moved to the device and dtype), interleaved."""
    device, dtype = _device_dtype(args)
    models = {k: m.to(device, dtype) for k, m in models.items()}
    x = torch.rand(batch, 3, args.imgsz, args.imgsz, device=device, dtype=dtype)
    times: dict[str, list[float]] = {k: [] for k in models}
    with torch.inference_mode():
        for round_ in range(args.warmup + args.rounds):
            for k, m in models.items():
                _sync(args.device)
                t0 = time.perf_counter()
                m(x)
                _sync(args.device)
                if round_ >= args.warmup:
                    times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def forward_cost(args: argparse.Namespace) -> dict[str, Any]:
    """The heads' forward cost against stock on random-weight models (nc=80) of each ``--cost-models`` entry: median
    fused forward ms at batch 1 and 32 (fp16 on the GPU), YOLO26 on its NMS-free default and with ``end2end: False``.

    Returns:
        (dict): ``{model: {"batch1": {head: {"ms", "vs_stock"}}, "batch32": ...}}``; a YOLO26 model's NMS path is
            the entry ``{model}-nms``.
    """
    out: dict[str, Any] = {}
    for name in args.cost_models:
        family, scale = name[:-1], name[-1]
        for end2end in (None, False) if family == "yolo26" else (None,):
            key = name if end2end is None else f"{name}-nms"
            models = {h: BENCH.build(family, scale, h, end2end).eval().fuse(verbose=False) for h in BENCH.HEADS}
            out[key] = {}
            for batch in (1, 32):
                ms = median_forward_ms(models, args, batch)
                out[key][f"batch{batch}"] = {h: {"ms": v, "vs_stock": v / ms["stock"]} for h, v in ms.items()}
    return out


def launch_table() -> str:
    """``scripts/bench_launches.py``'s table (counted on the CPU with a GPU's forms: the same on every machine)."""
    rows = BENCH.measure_all(BENCH.FAMILIES, BENCH.HEADS, "n", BENCH.parse_args([]))
    return BENCH.table(rows, "n")


def onnx_parity(name: str, best: str, args: argparse.Namespace) -> dict[str, Any]:
    """Export ``best`` to ONNX on the CPU; the largest score and box differences of onnxruntime vs PyTorch (CPU)."""
    import onnxruntime as ort
    from ultralytics import YOLO

    f = YOLO(best).export(format="onnx", imgsz=args.imgsz, device="cpu", simplify=True)
    x = torch.rand(1, 3, args.imgsz, args.imgsz, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = YOLO(best).model.float().eval().fuse(verbose=False)(x)
        ref = (ref[0] if isinstance(ref, (list, tuple)) else ref).numpy()
    session = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return {
        "onnx": f,
        "max_score_diff": float(abs(out[:, 4:] - ref[:, 4:]).max()),
        "max_box_diff_px": float(abs(out[:, :4] - ref[:, :4]).max()),
    }


def skip_amp_download_check() -> None:
    """Keep AMP on without ultralytics' ``check_amp``: it downloads yolo26n.pt, which an offline GPU machine cannot.

    The report's own AMP check is the one that matters here: every logged loss finite with ``amp=True``.
    """
    import ultralytics.engine.trainer as trainer

    trainer.check_amp = lambda model: True


def read_results_without_polars() -> None:
    """Read results.csv with the csv module where polars is missing (the GPU image lacks it; its wheel needs a binary
    runtime too large to carry). ultralytics imports polars only to store the CSV in each checkpoint (``save_model``).
    """
    try:
        import polars  # noqa: F401

        return
    except ImportError:
        from ultralytics.engine.trainer import BaseTrainer

    def read_results_csv(self) -> dict[str, list]:
        rows = list(csv.DictReader(self.csv.read_text().splitlines())) if self.csv.exists() else []
        return {k.strip(): [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}

    BaseTrainer.read_results_csv = read_results_csv


def run(args: argparse.Namespace) -> dict[str, Any]:
    """All the steps of the module docstring; returns the JSON's content."""
    skip_amp_download_check()
    read_results_without_polars()
    report: dict[str, Any] = {"argv": sys.argv[1:], "torch": torch.__version__, "platform": platform.platform()}
    if args.device != "cpu":
        report["gpu"] = torch.cuda.get_device_name(int(args.device))
    import ultralytics

    report["ultralytics"] = ultralytics.__version__
    report["launches"] = launch_table()
    report["forward_cost"] = forward_cost(args)
    if args.cost_only:
        report["ok"] = True
        return report
    runs = {name: train_one(name, cfg, args) for name, cfg in MODELS.items()}
    runs["tap_nondeterministic"] = train_one("tap_nondeterministic", MODELS["tap"], args, deterministic=False)
    stock_speed = runs["stock"]["train_img_per_s"]
    for r in runs.values():
        r["train_speed_vs_stock"] = r["train_img_per_s"] / stock_speed
    report["runs"] = runs
    weights = {k: runs[k]["best"] for k in MODELS}
    report["forward_ms"] = {}
    for batch in (1, 32):
        ms = forward_latency_ms(weights, args, batch)
        report["forward_ms"][f"batch{batch}"] = {k: {"ms": v, "vs_stock": v / ms["stock"]} for k, v in ms.items()}
    report["onnx"] = {k: onnx_parity(k, w, args) for k, w in weights.items()}
    report["ok"] = all(r["losses_finite"] for r in runs.values())
    return report


def main() -> None:
    """Parse the arguments, run the checks when a device is there, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="detection data YAML")
    ap.add_argument("--device", default="0", help="CUDA device index, or cpu for a smoke test")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=50, help="timed forward rounds")
    ap.add_argument("--warmup", type=int, default=10, help="untimed forward rounds first")
    ap.add_argument("--runs", type=Path, default=Path("runs/gpu_check"), help="folder of the training runs")
    ap.add_argument("--cost-models", nargs="+", default=list(COST_MODELS), help="models of the forward cost table")
    ap.add_argument("--cost-only", action="store_true", help="only the launch table and the forward cost table")
    ap.add_argument("--json", type=Path, required=True, help="the report")
    args = ap.parse_args()
    if args.device != "cpu" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing to check (use --device cpu for a smoke test)")
        return
    report = run(args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1))
    print(report["launches"])
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "launches")}, indent=1))
    print(f"gpu_check: {'ok' if report['ok'] else 'NON-FINITE LOSS'}; report in {args.json}")
    if not report["ok"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
