"""``yolo-tood compare`` on the GPU machine: its image lacks polars and cannot download ultralytics' AMP-check weights.

Applies ``scripts/gpu_check.py``'s two work-arounds (results.csv read with the csv module; AMP kept on without
``check_amp``'s download), then runs ``yolo-tood compare`` with the given arguments (train with ``--no-plots``: the
training plots need polars). Run by ``scripts/gpu_check.sh yolo26``.

Usage:
    python scripts/gpu_compare.py --data .gpu/bccd/bccd.yaml --family yolo26 --device 0 --no-plots ...
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import yolo_tood  # noqa: F401  registers the heads (no start-up hook on the GPU machine)
from yolo_tood.tools.cli import run_command


def main() -> None:
    spec = importlib.util.spec_from_file_location("gpu_check", Path(__file__).with_name("gpu_check.py"))
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    gpu_check.skip_amp_download_check()
    gpu_check.read_results_without_polars()
    run_command("compare", sys.argv[1:])


if __name__ == "__main__":
    main()
