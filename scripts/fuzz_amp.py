"""Fuzz TOODLoss under CUDA-style mixed precision, emulated on the CPU with ``torch.autocast("cpu", dtype)``.

Every batch runs forward + loss inside autocast (as ultralytics' trainer does with ``amp=True``) and the backward
outside it, for each precision and both loss phases (ATSS warm-up: ``head.epoch=0``; TAL: ``head.epoch=None``), on the
same weights and the same batch. A batch fails when it raises, or gives a non-finite loss or gradient. The fp32 run of
the same batch is the reference for the relative loss difference of the other precisions.

Batches cycle through kinds of ground truths: ordinary boxes (sides >= 2.5 px), tiny (0.02-0.5 px, half of them on
an anchor point), huge (up to 3x the image), out of the image, duplicated, empty images, 1,000 GTs in one image,
negatives of saturated score (class and probability-map biases at +12, so sigmoid > 0.99999 everywhere), and a third
of the boxes of zero or negative size.

Two differences to fp32 are reported: "loss" compares the loss computed under autocast with the loss computed in
plain fp32 on the same (autocast) predictions, i.e. the error of the loss computation alone; "end to end" compares
with the fp32 forward + loss, which also holds the error of the fp16/bf16 convolutions (and, with TAL, a different
assignment when the predictions move).

Usage:
    python scripts/fuzz_amp.py --batches 108 --imgsz 96 --json fuzz_amp.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path

import torch

CFG = Path(__file__).resolve().parents[1] / "cfg" / "yolov8n-tood.yaml"
KINDS = ("normal", "tiny", "huge", "outside", "duplicates", "empty", "many", "saturated", "zero")
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def make_batch(kind: str, g: torch.Generator, bs: int, imgsz: int, nc: int) -> dict:
    """Return an ultralytics batch dict of ``kind`` (see ``KINDS``): img (bs, 3, imgsz, imgsz), normalised xywh GTs."""

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    counts = torch.randint(1, 21, (bs,), generator=g)
    if kind == "empty":
        counts[torch.randperm(bs, generator=g)[: max(1, bs // 2)]] = 0
        if rand(1).item() < 0.3:
            counts[:] = 0
    elif kind == "many":
        counts[0] = 1000
    n = int(counts.sum())
    xy = rand(n, 2)
    px = 1.0 / imgsz  # one pixel in normalised units
    if kind == "tiny":  # 0.02-0.5 px, half of them centred on a stride-8 anchor point (so they get positives)
        wh = (0.02 + 0.48 * rand(n, 2)) * px
        xy[::2] = ((xy[::2] * imgsz / 8).floor() + 0.5) * 8 / imgsz
    elif kind == "zero":  # a third of the boxes with a zero or negative width or height, the others tiny
        wh = (0.02 + 0.98 * rand(n, 2)) * px
        wh[::3, int(rand(1).item() * 2)] *= -float(rand(1).item() < 0.5)
    elif kind == "huge":
        wh = 1.0 + 2.0 * rand(n, 2)
    elif kind == "outside":
        xy = rand(n, 2) * 3.0 - 1.0
        wh = (2.5 * px + rand(n, 2) * 0.5).clamp(max=1.0)
    else:
        wh = 2.5 * px + rand(n, 2) * (0.6 - 2.5 * px)
    if kind == "duplicates" and n:
        idx = torch.randint(0, max(n // 4, 1), (n,), generator=g)
        xy, wh = xy[idx], wh[idx]
    return {
        "img": rand(bs, 3, imgsz, imgsz),
        "batch_idx": torch.repeat_interleave(torch.arange(bs), counts).float(),
        "cls": torch.randint(0, nc, (n, 1), generator=g).float(),
        "bboxes": torch.cat((xy, wh), 1),
    }


def build_model(nc: int, seed: int, cfg: str | dict = str(CFG)):
    """Return a DetectionModel of ``cfg`` (default: n-scale YOLOv8-TOOD) in training mode and its criterion
    (``TOODLoss``; ultralytics' ``E2ELoss`` around it for an end-to-end head, YOLO26)."""
    from ultralytics.nn.tasks import DetectionModel

    from yolo_tood.integration.heads import is_tood_head

    torch.manual_seed(seed)
    model = DetectionModel(cfg, nc=nc, verbose=False).train()
    model.yaml["atss_epochs"] = 1  # epoch 0 is the ATSS warm-up (read by the criterion built below)
    return model, is_tood_head(model.model[-1]).criterion_for(model)


def score_biases(head) -> list[torch.Tensor]:
    """The biases of the class logits and of every path of M (TOODDetect or TAPDetect, any ``quality``), in every
    branch (one-to-many, and one-to-one on an end-to-end head)."""
    return [conv.bias for conv in head.score_convs()]


def detached(preds: dict) -> dict:
    """The training predictions (of each branch of an end-to-end head), detached and in fp32."""
    if "one2many" in preds:
        return {branch: detached(p) for branch, p in preds.items()}
    return {k: preds[k].detach().float() for k in ("boxes", "offsets", "scores")} | {
        "feats": [f.detach().float() for f in preds["feats"]]
    }


@contextlib.contextmanager
def saturated(head, on: bool):
    """Temporarily set the class and probability-map biases to +12 (scores > 0.99999) when ``on``."""
    biases = score_biases(head)
    saved = [b.detach().clone() for b in biases]
    if on:
        with torch.no_grad():
            for b in biases:
                b.fill_(12.0)
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(biases, saved):
                b.copy_(s)


def run_step(model, criterion, batch: dict, dtype: torch.dtype | None) -> dict:
    """Run forward + loss (under autocast when ``dtype``) and backward; return the items, finiteness and error."""
    model.zero_grad(set_to_none=True)
    ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else contextlib.nullcontext()
    try:
        with ctx:
            preds = model(batch["img"])
            loss, items = criterion(preds, batch)
        reference = detached(preds)
        loss.sum().backward()
    except Exception as e:  # the fuzz counts every exception as a failure
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
    grads_finite = all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    items = {k: float(v) for k, v in items.items()}
    out = {"items": items, "finite": bool(torch.isfinite(loss).all()) and grads_finite}
    if dtype is not None:  # the same predictions, loss in plain fp32 outside autocast
        out["loss_only_ref"] = {k: float(v) for k, v in criterion(reference, batch)[1].items()}
    return out


def fuzz(
    batches: int,
    imgsz: int,
    bs: int,
    nc: int,
    seed: int,
    precisions: list[str],
    phases: list[str],
    cfg: str | dict = str(CFG),
) -> dict:
    """Run the fuzz on a model of ``cfg`` and return the per (precision, phase) counts and loss differences to fp32."""
    model, criterion = build_model(nc, seed, cfg)
    head = model.model[-1]
    g = torch.Generator().manual_seed(seed)
    stats = {
        (p, ph): {"batches": 0, "failures": 0, "errors": {}, "loss_only": 0.0, "end_to_end": []}
        for p in precisions
        for ph in phases
    }
    for i in range(batches):
        kind = KINDS[i % len(KINDS)]
        batch = make_batch(kind, g, bs, imgsz, nc)
        for phase in phases:
            head.epoch = 0 if phase == "atss" else None
            ref = None
            for prec in ["fp32", *[p for p in precisions if p != "fp32"]]:
                with saturated(head, kind == "saturated"):
                    r = run_step(model, criterion, batch, PRECISIONS[prec])
                if prec == "fp32":
                    ref = r.get("items")
                if prec not in precisions:
                    continue
                s = stats[(prec, phase)]
                s["batches"] += 1
                if "error" in r or not r["finite"]:
                    s["failures"] += 1
                    key = f"{kind}: {r.get('error', 'non-finite loss or gradient')}"
                    s["errors"][key] = s["errors"].get(key, 0) + 1
                elif ref is not None and prec != "fp32":
                    s["end_to_end"].append(rel_diff(r["items"], ref))
                    s["loss_only"] = max(s["loss_only"], rel_diff(r["items"], r["loss_only_ref"]))
    head.epoch = None
    for s in stats.values():
        e2e = sorted(s.pop("end_to_end")) or [0.0]
        s["end_to_end_median"], s["end_to_end_max"] = e2e[len(e2e) // 2], e2e[-1]
    return {f"{p}/{ph}": v for (p, ph), v in stats.items()}


def rel_diff(items: dict, ref: dict) -> float:
    """Return the largest relative difference of the loss items to ``ref`` (absolute for |ref| < 0.01)."""
    diffs = [abs(v - ref[k]) / max(abs(ref[k]), 1e-2) for k, v in items.items()]
    return max((d if math.isfinite(d) else float("inf")) for d in diffs)


def main() -> None:
    """Parse the arguments, run the fuzz and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=54, help="batches per precision and phase")
    parser.add_argument("--imgsz", type=int, default=96)
    parser.add_argument("--bs", type=int, default=2)
    parser.add_argument("--nc", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--phases", nargs="+", default=["atss", "tal"], choices=["atss", "tal"])
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--model", default=str(CFG), help="model YAML (path or bare name), default yolov8n-tood")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    res = fuzz(args.batches, args.imgsz, args.bs, args.nc, args.seed, args.precisions, args.phases, args.model)
    print("| precision | phase | batches | failures | loss vs fp32 loss, max | end to end vs fp32, median / max |")
    print("| --- | --- | --- | --- | --- | --- |")
    for key, s in res.items():
        prec, phase = key.split("/")
        diffs = f"{s['loss_only']:.2g} | {s['end_to_end_median']:.2g} / {s['end_to_end_max']:.2g}"
        print(f"| {prec} | {phase} | {s['batches']} | {s['failures']} | {diffs} |")
        for err, count in s["errors"].items():
            print(f"|  |  |  | {count}x {err} |  |  |")
    print(f"({time.time() - t0:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
