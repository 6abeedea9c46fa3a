r"""``yolo-tood alignment``: the task alignment of detectors side by side (TOOD paper, Table 7 analysis).

Usage:
    yolo-tood alignment --models runs/stock/weights/best.pt runs/tood/weights/best.pt --names stock tood \
        --data $YOLO_TOOD_SHARED/datasets/bccd/bccd.yaml --split val --imgsz 320 --json alignment.json

Prints a markdown table with PCC top-50, IoU top-10 and the post-NMS correct / duplicate / error counts (plus the
boxes NMS redundant and the validator's mAP50-95) of each model. Definitions: yolo_tood/tools/analysis/alignment.py.

With ``--tap-parts`` each TOOD / TAP model is evaluated twice more, once with its probability map M switched off
(scores ranked by the cls branch alone) and once with its offsets switched off (sides measured from the anchors):
rows ``<name> (M off)`` and ``<name> (offsets off)``, which show what the model's PCC and mAP owe to each part of
TAP (yolo_tood/tools/analysis/tap_parts.py). A head whose M reads both the features and the box distribution
(``quality: both``) gets a third row, ``<name> (quality off)``: M from the features alone.

With ``--plots DIR`` it also writes (see yolo_tood/tools/analysis/plots.py):
    DIR/score_iou.png       score vs IoU of each object's top-50 predictions, one panel per model, PCC in the title
    DIR/distributions.png   histograms of score, IoU and t = s^alpha * u^beta of the same predictions, models overlaid
    DIR/maps_<image>.png    for the first --map-images images of the split, the first TOOD model's probability map,
                            score, TAP offsets and layer attention per level
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yolo_tood  # noqa: F401  registers the TOOD head so TOOD checkpoints and YAMLs load
from yolo_tood.tools.analysis import AlignmentResult, alignment_table, evaluate_alignment
from yolo_tood.tools.analysis.plots import plot_distributions, plot_head_maps, plot_score_iou
from yolo_tood.tools.analysis.tap_parts import TAP_PARTS, switch_off, tap_head
from yolo_tood.tools.commands.common import check_models, check_split, data_yaml, parse_and_run, split_images


def evaluate(
    models: list[str],
    data: str,
    names: list[str] | None = None,
    split: str = "val",
    imgsz: int = 640,
    batch: int = 16,
    conf: float = 0.05,
    device: str = "cpu",
    **kwargs: Any,
) -> dict[str, AlignmentResult]:
    """Evaluate the task alignment of each model on one dataset split.

    Args:
        models (list[str]): Checkpoints (or model YAMLs).
        data (str): Dataset YAML.
        names (list[str], optional): Display names, defaults to the checkpoint paths.
        split (str): Dataset split.
        imgsz (int): Inference image size.
        batch (int): Batch size.
        conf (float): NMS score threshold of the post-NMS counts.
        device (str): Device.
        **kwargs (Any): Further validator arguments (e.g. ``iou``, ``max_det``).

    Returns:
        (dict[str, AlignmentResult]): Results keyed by display name.
    """
    names = names or models
    if len(names) != len(models):
        raise ValueError(f"{len(names)} names for {len(models)} models")
    return {
        n: evaluate_alignment(m, data, split=split, imgsz=imgsz, batch=batch, conf=conf, device=device, **kwargs)
        for n, m in zip(names, models)
    }


def evaluate_tap_parts(
    models: list[str], data: str, names: list[str] | None = None, **kwargs: Any
) -> dict[str, AlignmentResult]:
    """Evaluate each TOOD / TAP model once more per part of TAP switched off (``yolo_tood.tools.analysis.tap_parts``).

    Args:
        models (list[str]): Checkpoints (or model YAMLs).
        data (str): Dataset YAML.
        names (list[str], optional): Display names, defaults to the checkpoint paths.
        **kwargs (Any): ``evaluate_alignment``'s arguments (split, imgsz, batch, conf, device, iou, max_det, ...).

    Returns:
        (dict[str, AlignmentResult]): Results keyed ``"<name> (M off)"`` and ``"<name> (offsets off)"``; models
            without a task-aligned head (stock) have no rows, a head without offsets (``tap="none"``) no offsets row.
    """
    from ultralytics import YOLO

    results = {}
    for name, model in zip(names or models, models):
        yolo = YOLO(model)
        head = tap_head(yolo.model)
        if head is None:
            continue
        # tap="none": no offsets to switch off; quality="features": no distribution path (with "distribution" alone,
        # its path is all of M: the "M off" row)
        has = {"m": True, "offsets": head.reg_offset is not None}
        has["quality"] = getattr(head, "dgqp", None) is not None and head.cls_prob is not None
        parts = [part for part in TAP_PARTS if has[part]]
        for i, part in enumerate(parts):
            if i:
                yolo = YOLO(model)  # a fresh copy for each further part: switch_off works in place
            switch_off(yolo.model, part)
            label = f"{name} ({'M' if part == 'm' else part} off)"
            results[label] = evaluate_alignment(yolo, data, **kwargs)
    return results


def write_plots(
    results: dict[str, AlignmentResult],
    models: list[str],
    out: Path,
    data: str,
    split: str,
    imgsz: int,
    map_images: int = 3,
    alpha: float = 1.0,
    beta: float = 6.0,
) -> list[Path]:
    """Write score_iou.png, distributions.png and maps_<image>.png (first TOOD / TAP model) into ``out``."""
    from ultralytics import YOLO

    from yolo_tood.nn.head import TOODDetect
    from yolo_tood.nn.tap_head import TAPDetect

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "score_iou.png", out / "distributions.png"]
    plot_score_iou(results, written[0])
    plot_distributions(results, written[1], alpha=alpha, beta=beta)
    heads = (TOODDetect, TAPDetect)
    tood = next((m for m in models if isinstance(YOLO(m).model.model[-1], heads)), None) if map_images else None
    if tood is not None:
        net = YOLO(tood).model
        for image in split_images(data, split, map_images):
            written.append(out / f"maps_{image.stem}.png")
            plot_head_maps(net, image, written[-1], imgsz=imgsz)
    elif map_images:
        print("No TOOD model among --models: no maps_<image>.png")
    return written


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the alignment arguments to a parser."""
    p.add_argument("--models", nargs="+", required=True, help="checkpoints (.pt) or model YAMLs")
    p.add_argument("--names", nargs="+", help="display names, one per model (default: the paths)")
    p.add_argument("--data", required=True, help="detection data YAML")
    p.add_argument("--split", default="val", help="dataset split to evaluate")
    p.add_argument("--imgsz", type=int, default=640, help="inference image size")
    p.add_argument("--batch", type=int, default=16, help="validation batch size")
    p.add_argument("--conf", type=float, default=0.05, help="NMS score threshold of the post-NMS counts")
    p.add_argument("--iou", type=float, default=0.7, help="NMS IoU threshold (ultralytics' validator default)")
    p.add_argument("--max-det", type=int, default=300, help="detections kept per image after NMS")
    p.add_argument("--device", default="cpu", help="device (cpu, 0, ...)")
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--plots", type=Path, help="also write the alignment plots into this folder")
    p.add_argument("--map-images", type=int, default=3, help="images of the split drawn as maps_<image>.png")
    p.add_argument(
        "--tap-parts",
        action="store_true",
        help="also evaluate each TOOD / TAP model with its probability map M, then its offsets (and, for quality "
        "'both', M's distribution path), switched off",
    )
    p.add_argument("--alpha", type=float, default=1.0, help="score exponent of t in distributions.png")
    p.add_argument("--beta", type=float, default=6.0, help="IoU exponent of t in distributions.png")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the data YAML and split, the models and their names before any model loads."""
    check_split(parser, args.data, data_yaml(parser, args.data), args.split)
    check_models(parser, "--models", args.models)
    if args.names and len(args.names) != len(args.models):
        parser.error(f"argument --names: {len(args.names)} names for {len(args.models)} models")


def main(argv: list[str] | None = None) -> dict[str, AlignmentResult]:
    """Parse and check the arguments, then ``run``."""
    return parse_and_run(sys.modules[__name__], "alignment", argv)


def run(a: argparse.Namespace) -> dict[str, AlignmentResult]:
    """Print the alignment tables; optionally write JSON and the plots."""
    results = evaluate(
        a.models, a.data, a.names, a.split, a.imgsz, a.batch, a.conf, a.device, iou=a.iou, max_det=a.max_det
    )
    if a.tap_parts:
        settings = dict(split=a.split, imgsz=a.imgsz, batch=a.batch, conf=a.conf, device=a.device)
        parts = evaluate_tap_parts(a.models, a.data, a.names, **settings, iou=a.iou, max_det=a.max_det)
        if not parts:
            print("No TOOD or TAP model among --models: --tap-parts adds no rows")
        results.update(parts)
    print(f"\nTask alignment on {a.data} ({a.split}, imgsz={a.imgsz}, NMS conf={a.conf} iou={a.iou})\n")
    print(alignment_table(results))
    print("\nEqual detection budget: each model's score threshold leaves as many detections as there are objects\n")
    print(alignment_table(results, budget=True))
    if a.json:
        settings = {k: v for k, v in vars(a).items() if k not in {"json", "models", "names", "plots"}}
        payload = {"settings": settings, "models": {n: r.to_dict() for n, r in results.items()}}
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(payload, indent=2, default=str))
        print(f"\nWrote {a.json}")
    if a.plots:
        paths = write_plots(
            results, a.models, a.plots, a.data, a.split, a.imgsz, a.map_images, alpha=a.alpha, beta=a.beta
        )
        print("\nWrote " + ", ".join(str(p) for p in paths))
    return results


if __name__ == "__main__":
    main()
