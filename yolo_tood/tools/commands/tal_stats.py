"""``yolo-tood tal-stats``: the picture of a TOOD run's label-assignment statistics (``tal_stats.jsonl`` -> PNG).

Usage:
    yolo-tood tal-stats runs/detect/train                   # writes runs/detect/train/tal_stats.png
    yolo-tood tal-stats runs/detect/train --out stats.png

Training a TOOD or TAP model writes tal_stats.jsonl into the run folder, one line per epoch, and with plots=True
draws tal_stats.png at the end. This draws it again from any run (with plots=False, or still training): positives per
GT and the share of GTs without a positive, by object size, and the classification signal. yolo-tood compare draws it
for each of its TOOD runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from yolo_tood.tools.commands.common import parse_and_run
from yolo_tood.train.tal_stats import PLOT_FILE, STATS_FILE, plot_tal_stats


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the run folder and the output path."""
    p.add_argument("run", type=Path, help=f"training run folder holding {STATS_FILE} (or the .jsonl file itself)")
    p.add_argument("--out", type=Path, default=None, help=f"PNG to write (default: {PLOT_FILE} beside the .jsonl)")


def stats_path(run: Path) -> Path:
    """The ``tal_stats.jsonl`` of a run folder, or ``run`` itself when it is the file."""
    return run if run.suffix == ".jsonl" else run / STATS_FILE


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Stop with one line when the run has no statistics (not a TOOD run, or not trained yet)."""
    if not stats_path(args.run).is_file():
        parser.error(f"argument run: {stats_path(args.run)} not found (is it the folder of a TOOD or TAP training?)")


def main(argv: list[str] | None = None) -> dict[str, list]:
    """Parse and check the arguments, then ``run``."""
    return parse_and_run(sys.modules[__name__], "tal-stats", argv)


def run(args: argparse.Namespace) -> dict[str, list]:
    """Draw the picture; return the plotted series."""
    path = stats_path(args.run)
    out = args.out or path.with_name(PLOT_FILE)
    data = plot_tal_stats(path, out)
    print(f"Wrote {out}")
    return data
