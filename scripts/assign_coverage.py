"""Which ground truths TOOD's ATSS warm-up leaves without a positive anchor, by class and size, before training.

Usage:
    python scripts/assign_coverage.py --data $YOLO_TOOD_SHARED/datasets/road_traffic/road_traffic.yaml --imgsz 320 \
        --settings reference atss_min_pos=1 atss_min_pos=1,tal_min_size=16

Each setting is ``reference`` (the model YAML defaults) or ``key=value,...`` of the keys ``atss_topk``,
``atss_min_pos`` and ``tal_min_size``. Prints one markdown table (zero-positive share per class and size bucket, one
column per setting) and the reasons (yolo_tood/analysis/coverage.py); ``--json`` writes the counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yolo_tood  # noqa: F401  registers the TOOD head (not needed here, but keeps the scripts alike)
from yolo_tood.analysis.coverage import Coverage, atss_coverage, coverage_table
from yolo_tood.train.hyp import TOODHyp

KEYS = {"atss_topk": "topk", "atss_min_pos": "min_pos", "tal_min_size": "min_size"}


def parse_setting(text: str) -> dict[str, float | int]:
    """Return the ``atss_coverage`` arguments of a setting (``reference`` or ``key=value,...``), checked by TOODHyp."""
    pairs = {} if text == "reference" else dict(kv.split("=", 1) for kv in text.split(","))
    unknown = set(pairs) - set(KEYS)
    if unknown:
        raise SystemExit(f"assign_coverage.py: unknown key(s) {sorted(unknown)}; use {sorted(KEYS)}")
    hyp = TOODHyp.from_yaml({k: float(v) if k == "tal_min_size" else int(v) for k, v in pairs.items()})
    return {arg: getattr(hyp, key) for key, arg in KEYS.items()}


def main(argv: list[str] | None = None) -> dict[str, Coverage]:
    """Run the coverage of every setting and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="detection data YAML")
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--split", default="train")
    p.add_argument("--settings", nargs="+", default=["reference", "atss_min_pos=1"])
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    results = {s: atss_coverage(args.data, args.imgsz, args.split, **parse_setting(s)) for s in args.settings}
    print(f"ATSS warm-up: GTs without a positive, {args.split} split at {args.imgsz} px (no augmentation)\n")
    print(coverage_table(results))
    if args.json:
        args.json.write_text(json.dumps({k: v.to_dict() for k, v in results.items()}, indent=2))
    return results


if __name__ == "__main__":
    main()
