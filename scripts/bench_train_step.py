"""Training-step throughput of stock YOLOv8 vs YOLOv8-TOOD, side by side in one process, and where TOOD's time goes.

Both models get the same real batches (ultralytics' own training dataloader with its augmentation, built once), and
the steps (forward, loss, backward, optimizer step) are interleaved stock/TOOD after a warm-up, so load from other
processes hits both alike. Prints a markdown table with images/s and the TOOD/stock ratio, and a breakdown of one
TOOD step (head forward, assigner, rest of the loss, backward).

Usage:
    python scripts/bench_train_step.py --data path/to/data.yaml --scale n --imgsz 320 --batch 16 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

CFG = Path(__file__).resolve().parents[1] / "cfg"


def build(cfg: str, nc: int):
    """Build a DetectionModel in training mode with ultralytics' default hyper-parameters attached."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(cfg, nc=nc, verbose=False).train()
    model.args = get_cfg()
    return model


def batches(data_yaml: str, imgsz: int, batch: int, count: int) -> list[dict]:
    """Return ``count`` preprocessed training batches from ultralytics' own dataset and augmentation pipeline."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(data_yaml)
    cfg = get_cfg(overrides={"imgsz": imgsz, "batch": batch})
    dataset = build_yolo_dataset(cfg, data["train"], batch, data, mode="train")
    loader = build_dataloader(dataset, batch, workers=0, shuffle=True)
    out = []
    for b in loader:
        b["img"] = b["img"].float() / 255
        out.append(b)
        if len(out) == count:
            break
    return out


def step(model, optimizer, batch: dict) -> float:
    """One optimizer step; returns its wall time in seconds."""
    t = time.perf_counter()
    loss, _ = model.loss(batch)
    loss.sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - t


def breakdown(model, batch: dict, repeats: int = 5) -> dict[str, float]:
    """Median seconds of TOOD's head forward, assigner, remaining loss and backward for one batch."""
    import torch

    criterion = model.criterion
    times: dict[str, list[float]] = {"model forward": [], "assigner": [], "loss (rest)": [], "backward": []}
    assign = criterion.assigner if not criterion.in_warmup() else criterion.atss_assigner
    original = assign.forward

    def timed(*args, **kwargs):
        t = time.perf_counter()
        out = original(*args, **kwargs)
        times["assigner"].append(time.perf_counter() - t)
        return out

    assign.forward = timed
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            preds = model(batch["img"])
            t1 = time.perf_counter()
            loss, _ = criterion(preds, batch)
            t2 = time.perf_counter()
            loss.sum().backward()
            t3 = time.perf_counter()
            model.zero_grad(set_to_none=True)
            times["model forward"].append(t1 - t0)
            times["loss (rest)"].append(t2 - t1 - times["assigner"][-1])
            times["backward"].append(t3 - t2)
    finally:
        assign.forward = original
    del torch
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="detection data YAML (its train split feeds the batches)")
    parser.add_argument("--family", default="yolov8", help="model family with a cfg/{family}-tood.yaml")
    parser.add_argument("--scale", default="n", choices=list("nsmlx"))
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20, help="measured steps per model (after 3 warm-up steps)")
    parser.add_argument("--epoch", type=int, default=None, help="TOOD phase: epoch < warm-up epochs is the warm-up")
    parser.add_argument("--epochs", type=int, default=60, help="run length from which the warm-up is resolved")
    args = parser.parse_args()

    import torch
    from ultralytics.data.utils import check_det_dataset

    from yolo_tood.train.hyp import TOODHyp

    nc = check_det_dataset(args.data)["nc"]
    data = batches(args.data, args.imgsz, args.batch, 4)
    models = {
        "stock": build(f"{args.family}{args.scale}.yaml", nc),
        "tood": build(str(CFG / f"{args.family}{args.scale}-tood.yaml"), nc),
    }
    models["tood"].model[-1].epoch = args.epoch
    hyp = TOODHyp.from_yaml(models["tood"].yaml)
    models["tood"].model[-1].atss_epochs = hyp.warmup_epochs(args.epochs)  # as the training callbacks resolve it
    optims = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(3 + args.steps):
        for k in models:  # interleaved: stock, tood, stock, tood, ...
            dt = step(models[k], optims[k], data[i % len(data)])
            if i >= 3:
                times[k].append(dt)

    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: args.batch / v for k, v in med.items()}
    phase = "TAL" if not models["tood"].criterion.in_warmup() else "ATSS warm-up"
    print(
        f"\n{args.family}{args.scale}, imgsz {args.imgsz}, batch {args.batch}, "
        f"torch threads {torch.get_num_threads()}, "
        f"median of {args.steps} interleaved steps, TOOD phase: {phase}\n"
    )
    print("| model | s/step | images/s | ratio TOOD/stock |")
    print("|---|---|---|---|")
    print(f"| stock | {med['stock']:.3f} | {ips['stock']:.1f} | |")
    print(f"| tood | {med['tood']:.3f} | {ips['tood']:.1f} | {ips['tood'] / ips['stock']:.2f} |")
    print("\nTOOD step breakdown (median s):")
    for k, v in breakdown(models["tood"], data[0]).items():
        print(f"  {k:14s} {v:.3f}")


if __name__ == "__main__":
    main()
