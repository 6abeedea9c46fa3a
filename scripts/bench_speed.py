"""Inference cost of the TOOD heads against stock YOLOv8: CPU latency (PyTorch and onnxruntime), params and GFLOPs.

For each scale, stock ``{family}{scale}.yaml``, ``cfg/{family}{scale}-tood.yaml`` (the T-Head) and
``cfg/{family}{scale}-tap.yaml`` (the stock head with TOOD's task-aligned predictor) (``--family``, yolov8 by
default) are built in one process, randomly
initialised with nc=80, fused and put in eval mode as ultralytics' predictor does (``model.fuse()``). They are timed
at 640x640, batch 1, in interleaved rounds (each model once per round, in a shuffled order) after a warm-up, so that
load from other processes hits all alike; the tables report medians. PyTorch runs with
``torch.set_num_threads(threads)``; the ONNX files come from ultralytics' own exporter (same opset for all, onnxslim
on, as ``yolo export format=onnx``) and run on onnxruntime's CPU provider with ``intra_op_num_threads=threads`` and
all graph optimisations.

Usage:
    python scripts/bench_speed.py                        # scales n and s, 2 threads, 30 runs, printed as markdown
    python scripts/bench_speed.py --threads 2 1 --reference  # also 1 thread, and the heads before their inference path
    python scripts/bench_speed.py --threads 1 --tap-parts     # also TAP without its pre-NMS bound / its offsets
    python scripts/bench_speed.py --tap-quality               # also TAP with M from the box distribution (DGQP)
    python scripts/bench_speed.py --scales n --runs 20 --out ''   # quicker, print only
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def build(cfg: str):
    """Return the ultralytics ``YOLO`` wrapper of a randomly initialised model built from ``cfg`` (nc=80)."""
    from ultralytics import YOLO

    return YOLO(cfg, task="detect")


def fused_eval(yolo) -> torch.nn.Module:
    """Return the fused eval-mode ``DetectionModel`` of ``yolo``, as ultralytics' predictor runs it."""
    model = yolo.model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model.fuse(verbose=False)


def export_onnx(yolo, workdir: Path, opset: int, imgsz: int, nms: bool | None = None) -> str:
    """Export with ultralytics' exporter into ``workdir`` (the exporter names the file after the YAML, in the cwd);
    ``nms=False`` exports an end-to-end model's NMS-free branch."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        f = yolo.export(format="onnx", imgsz=imgsz, opset=opset, simplify=True, nms=nms, verbose=False)
        return str(Path(workdir) / f)
    finally:
        os.chdir(cwd)


def interleaved_times_ms(fns: dict, runs: int, warmup: int, seed: int = 0) -> dict[str, list[float]]:
    """Time each zero-argument callable in ``fns`` once per round, ``runs`` rounds after ``warmup`` rounds.

    The order within a round is shuffled (seeded): a model run right after another one pays for its predecessor's
    cache and allocator state (measured: about 2-3% for whichever model follows the stock one in a fixed order).

    Returns:
        (dict[str, list[float]]): Milliseconds of each run per callable, in round order (round i of each is paired).
    """
    rng = random.Random(seed)
    keys = list(fns)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(runs):
        rng.shuffle(keys)
        for k in keys:
            t = time.perf_counter()
            fns[k]()
            times[k].append((time.perf_counter() - t) * 1e3)
    return times


def use_reference_path(yolo) -> None:
    """Make a TOOD / TAP model decode as its head did before its inference speed-ups: ultralytics' own ``DFL`` module.

    Same weights and outputs; only ``head.dfl`` is swapped (see ``DFLExpectation`` in head.py).
    """
    from ultralytics.nn.modules import DFL

    head = yolo.model.model[-1]
    if head.reg_max > 1:
        head.dfl = DFL(head.reg_max)


def keep_predictors_unmerged(yolo) -> None:
    """Make a TAP model fuse as it did before ``TAPDetect.fuse`` merged M's and O's predictors (``MergedPredictors``).

    Only ``Detect.fuse`` runs (the unused branch is dropped), so the fused model runs ``cls_prob`` and ``reg_offset``
    as four convs per level; the same outputs. An ONNX export runs those four convs either way.
    """
    from ultralytics.nn.modules import Detect

    head = yolo.model.model[-1]
    head.fuse = types.MethodType(Detect.fuse, head)


def bench_scale(
    scale: str,
    imgsz: int,
    runs: int,
    warmup: int,
    threads: int,
    opset: int,
    workdir: Path,
    reference: bool,
    family: str = "yolov8",
    tap_parts: bool = False,
    tap_quality: bool = False,
    nms_free: bool = False,
) -> dict:
    """Measure stock and TOOD models of one scale (and the TOOD / TAP reference paths if ``reference``).

    With ``tap_parts`` the TAP model is also timed without its pre-NMS bound (``nms_pre = 0``), without its offset
    branch (``tap="none"``: no re-sampling, no validity test) and with M's and O's predictors unmerged
    (``keep_predictors_unmerged``), which splits TAP's cost over its parts. With
    ``tap_quality`` it is also timed with M read from the box distribution (``quality: distribution`` and ``both``).
    With ``nms_free`` (an end-to-end family, YOLO26) the three models are also timed on their NMS-free branch
    (``end2end``, top-k postprocess included; ONNX exported with ``nms=False``), each against stock's NMS-free path.

    Returns:
        (dict): For each metric (params, gflops, torch_ms, ort_ms) a dict model-key -> value; for the latencies also
            ``{metric}_runs``, the per-run times, for paired ratios.
    """
    import onnxruntime as ort
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    tood_cfg = str(ROOT / "cfg" / f"{family}{scale}-tood.yaml")
    tap_cfg = str(ROOT / "cfg" / f"{family}{scale}-tap.yaml")  # the stock head + TOOD's task-aligned predictor
    yolos = {"stock": build(f"{family}{scale}.yaml"), "tood": build(tood_cfg), "tap": build(tap_cfg)}
    if reference:
        for key, cfg in (("tood_ref", tood_cfg), ("tap_ref", tap_cfg)):
            yolos[key] = build(cfg)
            use_reference_path(yolos[key])
    if tap_parts:
        yolos["tap_nms_pre0"], yolos["tap_none"], yolos["tap_unmerged"] = build(tap_cfg), build(tap_cfg), build(tap_cfg)
        yolos["tap_nms_pre0"].model.model[-1].nms_pre = 0
        keep_predictors_unmerged(yolos["tap_unmerged"])
        yolos["tap_none"].model.model[-1].reg_offset = None  # the tap="none" path (no offsets, no re-sampling)
    if tap_quality:
        for quality in ("distribution", "both"):
            yolos[f"tap_{quality}"] = build(tap_variant_yaml(family, scale, workdir, quality=quality))
    if nms_free:
        for key, cfg in (("stock", f"{family}{scale}.yaml"), ("tood", tood_cfg), ("tap", tap_cfg)):
            yolos[f"{key}_nms_free"] = build(cfg)
            yolos[f"{key}_nms_free"].model.end2end = True  # before fusion: fuse() keeps the one-to-one branch
    models = {k: fused_eval(y) for k, y in yolos.items()}
    x = torch.rand(1, 3, imgsz, imgsz)
    res = {
        "params": {k: get_num_params(m) for k, m in models.items()},
        "gflops": {k: get_flops(m, imgsz) for k, m in models.items()},
    }
    res["gflops_all"] = {k: v + matmul_gflops(models[k], imgsz) for k, v in res["gflops"].items()}
    with torch.inference_mode():
        res["torch_ms_runs"] = interleaved_times_ms({k: (lambda m=m: m(x)) for k, m in models.items()}, runs, warmup)

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle intra-op threads of one session would otherwise spin while the other session runs (interleaved timing)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sessions = {}
    for k, y in yolos.items():
        (workdir / k).mkdir(exist_ok=True)  # the two TOOD variants would otherwise write the same file name
        f = export_onnx(y, workdir / k, opset, imgsz, nms=False if k.endswith("_nms_free") else None)
        sessions[k] = ort.InferenceSession(f, so, providers=["CPUExecutionProvider"])
    xn = x.numpy()
    res["ort_ms_runs"] = interleaved_times_ms(
        {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: xn})) for k, s in sessions.items()}, runs, warmup
    )
    for metric in ("torch_ms", "ort_ms"):
        res[metric] = {k: statistics.median(v) for k, v in res[f"{metric}_runs"].items()}
    return res


def tap_variant_yaml(family: str, scale: str, workdir: Path, **head_args: str) -> str:
    """Write ``{family}{scale}-tap.yaml`` with TAPDetect's keyword arguments set into ``workdir``; return its path."""
    import yaml
    from ultralytics.nn.tasks import yaml_model_load

    from yolo_tood.integration.heads import head_spec

    cfg = yaml_model_load(f"{family}{scale}-tap.yaml")
    defaults = head_spec("TAPDetect").arg_defaults()
    cfg["head"][-1][3] = ["nc", *({**defaults, **head_args}.values())]
    path = workdir / f"{family}{scale}-tap-{'-'.join(head_args.values())}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def matmul_gflops(model: torch.nn.Module, imgsz: int) -> float:
    """GFLOPs of the TOOD head's TaskDecomposition matmuls, which thop (``get_flops``) does not count; 0 for stock.

    Each of the two decompositions is a (C x S*C) matrix applied at every anchor: 2 * 2 * C * S*C FLOPs per anchor.
    """
    head = model.model[-1]
    if not hasattr(head, "stacked_convs"):
        return 0.0
    anchors = sum((imgsz // int(s)) ** 2 for s in head.stride)
    return 2 * 2 * head.feat_channels * head.stacked_convs * head.feat_channels * anchors / 1e9


def ratio(res: dict, metric: str, key: str) -> float:
    """TOOD/stock ratio: of the values for params and GFLOPs, the median of the per-round ratios for latencies; an
    NMS-free row against stock's NMS-free path."""
    base = "stock_nms_free" if key.endswith("_nms_free") else "stock"
    if f"{metric}_runs" in res:
        runs = res[f"{metric}_runs"]
        return statistics.median(a / b for a, b in zip(runs[key], runs[base]))
    return res[metric][key] / res[metric][base]


def header(imgsz: int, runs: int, opset: int) -> str:
    """Describe the set-up common to all tables."""
    import onnxruntime as ort
    import ultralytics

    return (
        f"CPU inference at {imgsz}x{imgsz}, batch 1, randomly initialised nc=80 models, fused eval mode "
        f"(`model.fuse()`, as ultralytics predicts); median of {runs} interleaved rounds after a warm-up. "
        f"PyTorch {torch.__version__} with `torch.set_num_threads(T)`; onnxruntime {ort.__version__} CPU provider, "
        f"`intra_op_num_threads=T`, spinning off; ONNX from ultralytics {ultralytics.__version__}'s exporter "
        f"(opset {opset}, onnxslim) for both models. Machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores. Produced by `{' '.join(['python scripts/bench_speed.py', *sys.argv[1:]])}`."
    )


def table(results: dict[str, dict], threads: int, load: tuple[float, float], family: str = "yolov8") -> str:
    """Format one thread count's results as a markdown table with TOOD/stock ratios."""
    lines = [
        f"### T = {threads} thread{'s' if threads > 1 else ''} (1-min load average {load[0]:.1f} before, "
        f"{load[1]:.1f} after)",
        "",
        "| model | params (M) | GFLOPs | GFLOPs incl. matmuls | PyTorch CPU (ms) | ONNX Runtime CPU (ms) |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    # key: (row name, ratio label); the keys bench_scale may time, in table order
    rows = {
        "stock": ("{}", ""),
        "tood": ("{}-tood", "TOOD / stock"),
        "tood_ref": ("{}-tood, before (reference path)", "TOOD before / stock"),
        "tap": ("{}-tap", "TAP / stock"),
        "tap_ref": ("{}-tap, before (reference path)", "TAP before / stock"),
        "tap_nms_pre0": ("{}-tap, nms_pre 0", "TAP nms_pre 0 / stock"),
        "tap_none": ("{}-tap, tap none", "TAP tap none / stock"),
        "tap_unmerged": ("{}-tap, predictors unmerged", "TAP unmerged / stock"),
        "tap_distribution": ("{}-tap, quality distribution", "TAP distribution / stock"),
        "tap_both": ("{}-tap, quality both", "TAP both / stock"),
        "stock_nms_free": ("{}, NMS-free", "stock NMS-free / stock"),
        "tood_nms_free": ("{}-tood, NMS-free", "TOOD NMS-free / stock NMS-free"),
        "tap_nms_free": ("{}-tap, NMS-free", "TAP NMS-free / stock NMS-free"),
    }
    metrics = ("params", "gflops", "gflops_all", "torch_ms", "ort_ms")
    for scale, r in results.items():
        keys = [k for k in rows if k in r["params"]]
        for k in keys:
            lines.append(
                f"| {family}{rows[k][0].format(scale)} | {r['params'][k] / 1e6:.2f} | {r['gflops'][k]:.1f} "
                f"| {r['gflops_all'][k]:.1f} | {r['torch_ms'][k]:.1f} | {r['ort_ms'][k]:.1f} |"
            )
        for k in keys[1:]:
            q = {m: ratio(r, m, k) for m in metrics}
            label = rows[k][1]
            bold = "**" if k in ("tood", "tap", "tood_nms_free", "tap_nms_free") else ""
            lines.append(
                f"| {bold}{scale}: {label}{bold} | {q['params']:.3f} | {q['gflops']:.3f} | {q['gflops_all']:.3f} "
                f"| {bold}{q['torch_ms']:.3f}{bold} | {bold}{q['ort_ms']:.3f}{bold} |"
            )
    return "\n".join(lines)


NOTES = """\
Notes:
- Latency ratios are the median of the per-round ratios (each round times the models back to back, in a shuffled
  order), which is steadier than the ratio of the medians when other processes share the CPU.
- The 'before' rows decode boxes with ultralytics' DFL module instead of the head's `DFLExpectation` (same
  function and weights, re-arranged; see head.py). The 'nms_pre 0' and 'tap none' rows (`--tap-parts`) are TAP
  without its pre-NMS bound and without its offset branch (no re-sampling, no validity test); 'predictors unmerged'
  is TAP fused without merging M's and O's predictors (`MergedPredictors`; the same ONNX graph).
- GFLOPs: ultralytics' `get_flops` (thop, as in the model summary), which counts the modules it knows (convolutions,
  norms) but not the TOOD head's TaskDecomposition matmuls; 'incl. matmuls' adds them (2 x 2 x C x S*C FLOPs per
  anchor). `grid_sample` (4 bilinear taps per box channel) is left out."""


def main() -> None:
    """Parse the command line, run the benchmark, print the tables and write them to ``--out``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--family", default="yolov8", help="model family with a cfg/{family}-tood.yaml")
    ap.add_argument("--scales", default="ns", help="model scales, e.g. 'ns'")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--runs", type=int, default=30, help="timed runs per model and runtime (>= 20)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument(
        "--threads", type=int, nargs="+", default=[2], help="torch.set_num_threads and onnxruntime intra-op threads"
    )
    ap.add_argument("--opset", type=int, default=18, help="ONNX opset for both models (>= 16 for TOOD's GridSample)")
    ap.add_argument("--reference", action="store_true", help="also time the heads before their inference path")
    ap.add_argument(
        "--tap-parts",
        action="store_true",
        help="also time TAP without its pre-NMS bound, without its offsets and with its predictors unmerged",
    )
    ap.add_argument(
        "--tap-quality", action="store_true", help="also time TAP with M read from the box distribution (DGQP)"
    )
    ap.add_argument("--out", default="", help="also write the markdown table to this file")
    args = ap.parse_args()
    np.random.seed(0)
    torch.manual_seed(0)

    from ultralytics.nn.tasks import yaml_model_load

    nms_free = bool(yaml_model_load(f"{args.family}n.yaml").get("end2end"))  # YOLO26: both inference paths
    sections, by_threads = [header(args.imgsz, args.runs, args.opset)], {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        load = os.getloadavg()[0]
        results = by_threads[threads] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for scale in args.scales:
                results[scale] = bench_scale(
                    scale,
                    args.imgsz,
                    args.runs,
                    args.warmup,
                    threads,
                    args.opset,
                    Path(tmp),
                    args.reference,
                    args.family,
                    args.tap_parts,
                    args.tap_quality,
                    nms_free,
                )
        sections.append(table(results, threads, (load, os.getloadavg()[0]), args.family))
    notes = NOTES
    if 1 in by_threads:  # more threads slower than one: they were starved by other processes, not limited by work
        one = {scale: r["torch_ms"]["stock"] for scale, r in by_threads[1].items()}
        starved = [
            f"T={t} ({scale}: {r['torch_ms']['stock']:.0f} ms vs {one[scale]:.0f} ms)"
            for t, results in by_threads.items()
            for scale, r in results.items()
            if t > 1 and r["torch_ms"]["stock"] > one[scale]
        ]
        if starved:
            notes += (
                "\n- WARNING: stock PyTorch was slower with more threads than with one at "
                + ", ".join(starved)
                + ": its OpenMP threads were starved by other processes, so those PyTorch figures measure contention"
                " (they grow with the number of parallel ops), not the models; use the T=1 figures, or re-run on an"
                " idle machine."
            )
    md = "\n\n".join([*sections, notes])
    print(md)
    if args.out:
        Path(args.out).write_text("# Inference speed: TOOD head vs stock YOLOv8 head\n\n" + md + "\n")
        print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
