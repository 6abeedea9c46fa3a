"""Training-step throughput of stock YOLO vs its TOOD heads, side by side in one process, and where TOOD's time goes.

Every model gets the same real batches (ultralytics' own training dataloader with its augmentation, built once), and
the steps (forward, loss, backward, optimizer step) are interleaved after a warm-up, so load from other processes hits
all alike. Prints a markdown table with images/s and the ratio to stock, and a breakdown of one TOOD step (head
forward, assigner, rest of the loss, backward). ``--no-end2end`` also times each model of an end-to-end family
(YOLO26) without its one-to-one branch (``end2end: False``): what that branch costs in training.

Usage:
    python scripts/bench_train_step.py --data path/to/data.yaml --scale n --imgsz 320 --batch 16 --steps 20
    python scripts/bench_train_step.py --data path/to/data.yaml --family yolo26 --models stock tap tood --no-end2end
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

CFG = Path(__file__).resolve().parents[1] / "cfg"


def build(cfg: str, nc: int, end2end: bool | None = None):
    """Build a DetectionModel in training mode with ultralytics' default hyper-parameters attached; ``end2end``
    overrides the YAML's."""
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel, yaml_model_load

    d = yaml_model_load(cfg)
    if end2end is not None:
        d["end2end"] = end2end
    model = DetectionModel(d, nc=nc, verbose=False).train()
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
    tood_loss = getattr(criterion, "one2many", criterion)  # E2ELoss: the one-to-many branch's assigner is timed
    assign = tood_loss.tal_assigner if not tood_loss.in_warmup() else tood_loss.atss_assigner
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
    parser.add_argument("--models", nargs="+", default=["stock", "tood"], choices=["stock", "tood", "tap"])
    parser.add_argument("--no-end2end", action="store_true", help="also time each model without a one-to-one branch")
    args = parser.parse_args()

    import torch
    from ultralytics.data.utils import check_det_dataset

    nc = check_det_dataset(args.data)["nc"]
    data = batches(args.data, args.imgsz, args.batch, 4)
    cfgs = {k: f"{args.family}{args.scale}.yaml" if k == "stock" else str(CFG / f"{args.family}{args.scale}-{k}.yaml")
            for k in ["stock", *(m for m in args.models if m != "stock")]}  # fmt: skip
    models = {k: build(cfg, nc) for k, cfg in cfgs.items()}
    if args.no_end2end:
        models |= {f"{k}, no one-to-one": build(cfg, nc, end2end=False) for k, cfg in cfgs.items()}
    for k, model in models.items():
        if k.split(",")[0] != "stock":
            model.model[-1].epoch = args.epoch
            model.args.epochs = args.epochs  # the run's length, from which the loss resolves the warm-up
    optims = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(3 + args.steps):
        for k in models:  # interleaved: stock, tood, stock, tood, ...
            dt = step(models[k], optims[k], data[i % len(data)])
            if i >= 3:
                times[k].append(dt)

    med = {k: statistics.median(v) for k, v in times.items()}
    ips = {k: args.batch / v for k, v in med.items()}
    first = next(k for k in models if k != "stock")
    tood_loss = getattr(models[first].criterion, "one2many", models[first].criterion)
    phase = "TAL" if not tood_loss.in_warmup() else "ATSS warm-up"
    print(
        f"\n{args.family}{args.scale}, imgsz {args.imgsz}, batch {args.batch}, "
        f"torch threads {torch.get_num_threads()}, "
        f"median of {args.steps} interleaved steps, TOOD phase: {phase}\n"
    )
    print("| model | s/step | images/s | images/s ratio to stock |")
    print("|---|---|---|---|")
    for k in models:
        print(f"| {k} | {med[k]:.3f} | {ips[k]:.1f} | {ips[k] / ips['stock']:.2f} |")
    print(f"\n{first} step breakdown (median s):")
    for k, v in breakdown(models[first], data[0]).items():
        print(f"  {k:14s} {v:.3f}")


if __name__ == "__main__":
    main()
