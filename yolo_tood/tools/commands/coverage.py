r"""``yolo-tood coverage``: which ground truths TOOD's ATSS warm-up leaves without a positive anchor, before training.

Usage:
    yolo-tood coverage --data $YOLO_TOOD_SHARED/datasets/road_traffic/road_traffic.yaml --imgsz 320 \
        --settings reference atss_min_pos=1 atss_min_pos=1,tal_min_size=16

Each setting is ``reference`` (the model YAML defaults) or ``key=value,...`` of the keys ``atss_topk``,
``atss_min_pos`` and ``tal_min_size``. Prints one markdown table (zero-positive share per class and size bucket, one
column per setting) and the reasons (yolo_tood/tools/analysis/coverage.py); ``--json`` writes the counts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from yolo_tood.tools.analysis.coverage import Coverage, atss_coverage, coverage_table
from yolo_tood.tools.commands.common import check_split, data_yaml, parse_and_run
from yolo_tood.train.hyp import TOODHyp

KEYS = {"atss_topk": "topk", "atss_min_pos": "min_pos", "tal_min_size": "min_size"}


def parse_setting(text: str) -> dict[str, float | int]:
    """Return the ``atss_coverage`` arguments of a setting (``reference`` or ``key=value,...``), checked by TOODHyp.

    Raises:
        ValueError: On an unknown key, a malformed pair or a value TOODHyp refuses.

    Examples:
        >>> parse_setting("atss_min_pos=1")["min_pos"]
        1
    """
    pairs = {}
    if text != "reference":
        for item in text.split(","):
            key, sep, value = item.partition("=")
            if not sep or key not in KEYS:
                raise ValueError(f"bad setting item {item!r} in {text!r}: use reference or key=value of {sorted(KEYS)}")
            pairs[key] = value
    try:
        values = {k: float(v) if k == "tal_min_size" else int(v) for k, v in pairs.items()}
    except ValueError:
        raise ValueError(f"bad value in setting {text!r}: atss_topk and atss_min_pos take integers") from None
    hyp = TOODHyp.from_yaml(values)
    return {arg: getattr(hyp, key) for key, arg in KEYS.items()}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the coverage arguments to a parser."""
    p.add_argument("--data", required=True, help="detection data YAML")
    p.add_argument("--imgsz", type=int, default=320, help="image size the boxes are scaled to (letterboxed)")
    p.add_argument("--split", default="train", help="dataset split whose labels are assigned")
    p.add_argument(
        "--settings",
        nargs="+",
        default=["reference", "atss_min_pos=1"],
        help="one column each: reference (the YAML defaults) or key=value,... of atss_topk, atss_min_pos, tal_min_size",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the counts to this JSON file")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Check the data YAML, the split and every setting before any assignment runs."""
    check_split(parser, args.data, data_yaml(parser, args.data), args.split)
    for setting in args.settings:
        try:
            parse_setting(setting)
        except ValueError as e:
            parser.error(f"argument --settings: {e}")


def main(argv: list[str] | None = None) -> dict[str, Coverage]:
    """Parse and check the arguments, then ``run``."""
    return parse_and_run(sys.modules[__name__], "coverage", argv)


def run(args: argparse.Namespace) -> dict[str, Coverage]:
    """Run the coverage of every setting and print the table."""
    results = {s: atss_coverage(args.data, args.imgsz, args.split, **parse_setting(s)) for s in args.settings}
    print(f"ATSS warm-up: GTs without a positive, {args.split} split at {args.imgsz} px (no augmentation)\n")
    print(coverage_table(results))
    if args.json:
        args.json.write_text(json.dumps({k: v.to_dict() for k, v in results.items()}, indent=2))
    return results
