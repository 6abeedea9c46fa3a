#!/usr/bin/env bash
# The GPU checks of yolo-tood in one command (never in CI). Two steps:
#
#   scripts/gpu_check.sh prepare      # here, with a package registry: the wheels ultralytics needs beyond what the GPU
#                                     # machine has (.whl/) and a copy of one dataset (.gpu/road_traffic), both ignored
#   scripts/gpu_check.sh run [OUT]    # on the GPU machine, from the repository root: installs the project and the
#                                     # wheels offline, runs scripts/gpu_check.py (at most ~8 min on one H200), writes
#                                     # OUT/gpu_check.json (default: $OUT, else runs/gpu_check)
#
# The device tool carries the ignored folders: run(command="bash scripts/gpu_check.sh run", carry=[".whl", ".gpu"]).
# Wheels are Python-independent (py3-none-any); the GPU image already holds torch, torchvision, onnx, onnxruntime,
# opencv, numpy, scipy, matplotlib, pillow, pyyaml, requests and psutil (device/KINDS.md). Project + wheels + road_traffic
# stay under the 64 MiB a call may carry.
set -euo pipefail
cd "$(dirname "$0")/.."
# polars (plots only) is left out: the check trains with plots=False
WHEELS=("ultralytics==8.4.190" "ultralytics-thop" "ultralytics-platform" "onnxslim")
SHARED="${YOLO_TOOD_SHARED:-../shared}"

case "${1:-}" in
prepare)
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
    grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>.git/info/exclude
    rm -rf .whl && mkdir -p .whl .gpu
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d .whl "${WHEELS[@]}"
    rm -rf .gpu/road_traffic && cp -r "$SHARED/datasets/road_traffic" .gpu/road_traffic
    du -sh .whl .gpu
    ;;
run)
    out="${2:-${OUT:-runs/gpu_check}}"
    mkdir -p "$out"
    python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)' || {
        echo "gpu_check: no CUDA device here; nothing to check"
        exit 0
    }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    cp -r yolo_tood /tmp/site/ # the package itself; gpu_check.py imports it first, which registers the heads
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 YOLO_OFFLINE=1
    set -o pipefail
    python3 scripts/gpu_check.py --data .gpu/road_traffic/road_traffic.yaml --json "$out/gpu_check.json" 2>&1 |
        tee "$out/gpu_check.log"
    ;;
*)
    echo "usage: scripts/gpu_check.sh prepare | run [OUT]" >&2
    exit 2
    ;;
esac
