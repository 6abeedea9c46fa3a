"""Benchmark TOOD's TAL assigner against ultralytics' TaskAlignedAssigner: peak memory and time on the CPU.

Every measurement runs in a fresh subprocess on identical seeded inputs (realistic: 640 px, strides 8/16/32, i.e.
8400 anchors, GT sizes log-uniform in 8..320 px, predicted boxes of a few strides around every anchor, score
probabilities skewed towards 0). The child builds its inputs, resets its peak-RSS counter (Linux
``/proc/self/clear_refs`` = 5; if that is not allowed it falls back to the peak after building the inputs as the
baseline), runs the assigner ``--repeats`` times after one warm-up call, and reports the median time, the peak
RSS above the baseline (torch allocations are invisible to ``tracemalloc``; the RSS high-water mark sees them) and
the whole process's peak RSS (interpreter, torch and inputs included: what ``ru_maxrss`` reports for the child).

Usage:
    python scripts/bench_assigner.py                      # 16 images x 1000 GT, plus a 2000-GT run of both
    python scripts/bench_assigner.py --images 4 --gts 200 --extra-gts 0 --repeats 2   # quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPLS = {"ultralytics": "ultralytics TaskAlignedAssigner", "tood": "yolo_tood TOODTaskAlignedAssigner"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=16, help="images per batch")
    p.add_argument("--gts", type=int, default=1000, help="GTs per image")
    p.add_argument("--anchors-imgsz", type=int, default=640, help="image size giving the anchors (strides 8/16/32)")
    p.add_argument("--nc", type=int, default=80, help="number of classes")
    p.add_argument("--topk", type=int, default=13)
    p.add_argument("--repeats", type=int, default=3, help="timed runs after one warm-up (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each child (keep the machine usable)")
    p.add_argument("--extra-gts", type=int, default=2000, help="GTs per image of the extra run (0: none)")
    p.add_argument("--extra-impls", default="tood,ultralytics", help="implementations of the extra run")
    p.add_argument("--worker", choices=sorted(IMPLS), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_inputs(images: int, gts: int, imgsz: int, nc: int, seed: int = 0) -> tuple:
    """Return seeded (pd_scores, pd_bboxes, anc_points, gt_labels, gt_bboxes, mask_gt) in pixels."""
    import torch
    from ultralytics.utils.tal import make_anchors

    g = torch.Generator().manual_seed(seed)
    strides = torch.tensor([8.0, 16.0, 32.0])
    sizes = torch.tensor([[imgsz // int(s), imgsz // int(s)] for s in strides])
    anc, stride_tensor = make_anchors(sizes, strides, 0.5)
    anc = anc * stride_tensor  # (A, 2) pixels
    na = anc.shape[0]
    log_wh = torch.empty(images, gts, 2).uniform_(2.079, 5.768, generator=g)  # ln 8 .. ln 320
    wh = log_wh.exp_()
    ctr = torch.rand(images, gts, 2, generator=g) * imgsz
    gt_bboxes = torch.cat((ctr - wh / 2, ctr + wh / 2), -1).clamp_(0, imgsz)
    gt_labels = torch.randint(0, nc, (images, gts, 1), generator=g).float()
    mask_gt = torch.ones(images, gts, 1)
    dist = torch.rand(images, na, 4, generator=g).mul_(4 * stride_tensor.view(1, -1, 1))  # up to 4 strides a side
    pd_bboxes = torch.cat((anc - dist[..., :2], anc + dist[..., 2:]), -1)
    pd_scores = torch.rand(images, na, nc, generator=g).pow_(3)  # mostly small probabilities, as a trained detector
    return pd_scores, pd_bboxes, anc, gt_labels, gt_bboxes, mask_gt


def _vm_kb(key: str) -> int:
    """Return a /proc/self/status memory field in kB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def worker(args: argparse.Namespace) -> None:
    """Run one implementation in this (fresh) process and print a JSON line with times and peak memory."""
    import resource

    import torch

    torch.set_num_threads(args.threads)
    if args.worker == "ultralytics":
        from ultralytics.utils.tal import TaskAlignedAssigner

        assigner = TaskAlignedAssigner(topk=args.topk, num_classes=args.nc, alpha=1.0, beta=6.0)
    else:
        sys.path.insert(0, str(ROOT))
        from yolo_tood.train.assigner import TOODTaskAlignedAssigner

        assigner = TOODTaskAlignedAssigner.from_hyp(topk=args.topk)
    inputs = make_inputs(args.images, args.gts, args.anchors_imgsz, args.nc)
    build_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak so far (imports + input building)
    try:  # reset the RSS high-water mark so the peak below is the assigner's own (input building excluded)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    base_kb = _vm_kb("VmRSS") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for i in range(args.repeats + 1):
        t0 = time.perf_counter()
        out = assigner(*inputs)
        dt = time.perf_counter() - t0
        del out
        if i:  # the first call is a warm-up
            times.append(dt)
    peak_kb = _vm_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # the whole process's peak, what RUSAGE_CHILDREN's ru_maxrss would show for this child alone
    process_peak_kb = max(build_peak_kb, peak_kb, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    print(
        json.dumps(
            {"times": times, "base_kb": base_kb, "peak_kb": peak_kb, "reset": reset, "process_peak_kb": process_peak_kb}
        )
    )


def run_child(args: argparse.Namespace, impl: str, gts: int) -> dict:
    """Measure ``impl`` with ``gts`` GTs per image in a fresh subprocess and return its measurements."""
    cmd = [sys.executable, __file__, "--worker", impl, "--gts", str(gts), "--images", str(args.images)]
    cmd += ["--anchors-imgsz", str(args.anchors_imgsz), "--nc", str(args.nc), "--topk", str(args.topk)]
    cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{impl} with {gts} GTs failed:\n{proc.stderr[-2000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["median_s"] = statistics.median(res["times"])
    res["delta_mib"] = (res["peak_kb"] - res["base_kb"]) / 1024
    return res


def main(argv: list[str] | None = None) -> None:
    """Run every measurement and print a markdown table."""
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return
    runs = [(impl, args.gts) for impl in ("ultralytics", "tood")]
    if args.extra_gts:
        runs += [(impl, args.extra_gts) for impl in ("ultralytics", "tood") if impl in args.extra_impls.split(",")]
    results = {}
    for impl, gts in runs:
        print(f"running {impl} with {args.images} images x {gts} GTs ...", file=sys.stderr, flush=True)
        results[impl, gts] = run_child(args, impl, gts)

    na = sum((args.anchors_imgsz // s) ** 2 for s in (8, 16, 32))  # 8400 at 640
    print(
        f"\nCPU, torch threads={args.threads}, {args.images} images, {na} anchors ({args.anchors_imgsz} px), "
        f"nc={args.nc}, topk={args.topk}, alpha=1, beta=6; median of {args.repeats} runs after a warm-up\n"
    )
    print(
        "| GTs/image | assigner | median time (s) | peak memory above inputs (MiB) | process peak RSS (MiB) |"
        " time ratio | memory ratio |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for (impl, gts), r in results.items():
        ref = results.get(("ultralytics", gts))
        t_ratio = f"{r['median_s'] / ref['median_s']:.2f}" if ref else "n/a"
        m_ratio = f"{r['delta_mib'] / ref['delta_mib']:.3f}" if ref and ref["delta_mib"] > 0 else "n/a"
        cells = [str(gts), IMPLS[impl], f"{r['median_s']:.3f}", f"{r['delta_mib']:.0f}"]
        cells += [f"{r['process_peak_kb'] / 1024:.0f}", t_ratio, m_ratio]
        print("| " + " | ".join(cells) + " |")
    if not all(r["reset"] for r in results.values()):
        print("\nnote: /proc/self/clear_refs was not writable; peaks above inputs include input building")


if __name__ == "__main__":
    main()
