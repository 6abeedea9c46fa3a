"""Print params and GFLOPs of {family}{scale}-tood.yaml against stock {family}{scale}.yaml for every scale.

Usage: python scripts/model_size.py [--family yolov8|yolo11] [--imgsz 640] [--nc 80]
"""

from __future__ import annotations

import argparse
from pathlib import Path

CFG = Path(__file__).resolve().parents[1] / "cfg"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--nc", type=int, default=80)
    parser.add_argument("--family", default="yolov8", choices=["yolov8", "yolo11"])
    args = parser.parse_args()

    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    print("| scale | head C x S | params TOOD | params stock | ratio | GFLOPs TOOD | GFLOPs stock | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for scale in "nsmlx":
        tood = DetectionModel(str(CFG / f"{args.family}{scale}-tood.yaml"), nc=args.nc, verbose=False)
        stock = DetectionModel(f"{args.family}{scale}.yaml", nc=args.nc, verbose=False)
        head = tood.model[-1]
        p, ps = get_num_params(tood), get_num_params(stock)
        f, fs = get_flops(tood, args.imgsz), get_flops(stock, args.imgsz)
        cells = [scale, f"{head.feat_channels} x {head.stacked_convs}", f"{p / 1e6:.2f}M", f"{ps / 1e6:.2f}M"]
        cells += [f"{p / ps:.2f}", f"{f:.1f}", f"{fs:.1f}", f"{f / fs:.2f}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
