#!/usr/bin/env bash
# The GPU checks of yolo-tood in one command (never in CI). Two steps:
#
#   scripts/gpu_check.sh prepare      # here, with a package registry: the wheels ultralytics needs beyond what the GPU
#                                     # machine has (.whl/) and a copy of one dataset (.gpu/road_traffic), both ignored
#   scripts/gpu_check.sh run [OUT]    # on the GPU machine, from the repository root: installs the project and the
#                                     # wheels offline, runs scripts/gpu_check.py (at most ~8 min on one H200), writes
#                                     # OUT/gpu_check.json (default: $OUT, else runs/gpu_check)
#   scripts/gpu_check.sh yolo26 [OUT] # on the GPU machine: YOLO26 fine-tuning evidence (issue: YOLO26 with TOOD): a
#                                     # stock yolo26n trained on road_traffic (30 epochs, 320 px), then BCCD fine-tuning
#                                     # from it, stock vs tap, seeds 0-2, 15 epochs, val with and without NMS
#                                     # (yolo-tood compare through scripts/gpu_compare.py); on one H200 about 190 s +
#                                     # 55 s per run: run(..., timeout_s=600). Reports land flat in OUT (yolo26_ft__...)
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
    for set in road_traffic bccd; do
        rm -rf ".gpu/$set" && cp -r "$SHARED/datasets/$set" ".gpu/$set"
        rm -f .gpu/$set/labels/*.cache
    done
    du -sh .whl .gpu
    ;;
run | yolo26)
    out="${2:-${OUT:-runs/gpu_check}}"
    mkdir -p "$out"
    # DEVICE=cpu (yolo26 only): the same steps on the CPU, as a smoke test of this script (with SRC_EPOCHS=1 ...)
    [ "${DEVICE:-0}" = cpu ] || python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)' || {
        echo "gpu_check: no CUDA device here; nothing to check"
        exit 0
    }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    cp -r yolo_tood /tmp/site/ # the package itself; gpu_check.py imports it first, which registers the heads
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 YOLO_OFFLINE=1
    set -o pipefail
    if [ "$1" = run ]; then
        python3 scripts/gpu_check.py --data .gpu/road_traffic/road_traffic.yaml --json "$out/gpu_check.json" 2>&1 |
            tee "$out/gpu_check.log"
        exit
    fi
    # runs train under runs/gpu_yolo26 (their weights stay there); the reports, records and logs are copied to OUT
    # after each step, so that a step cut by its time limit still leaves what it finished
    work=runs/gpu_yolo26 src="${SRC_EPOCHS:-30}" ft="${FT_EPOCHS:-15}"
    common=(--family yolo26 --scale n --imgsz "${IMGSZ:-320}" --batch 16 --val-only --device "${DEVICE:-0}" --workers 8)
    common+=(--no-plots)
    out=$(cd "$out" && pwd)
    # flat names (yolo26_ft__runs__tap_s0__compare_run.json): the device tool does not return folders that deep
    keep() {
        (cd "$work" && find . \( -name '*.json' -o -name '*.md' -o -name results.csv \) | while read -r f; do
            f="${f#./}" && cp "$f" "$out/${f//\//__}"
        done)
    }
    timeout "${SRC_LIMIT:-200}" python3 scripts/gpu_compare.py --data .gpu/road_traffic/road_traffic.yaml \
        --epochs "$src" --models stock --seeds 0 "${common[@]}" --out "$work/yolo26_src" >"$out/yolo26_src.log" 2>&1 ||
        echo "gpu_check yolo26: the source step ended with $?"
    keep
    tail -5 "$out/yolo26_src.log"
    timeout "${FT_LIMIT:-360}" python3 scripts/gpu_compare.py --data .gpu/bccd/bccd.yaml --epochs "$ft" \
        --models stock tap --seeds 0 1 2 --pretrained "$work/yolo26_src/runs/stock_s0/weights/best.pt" \
        "${common[@]}" --out "$work/yolo26_ft" >"$out/yolo26_ft.log" 2>&1 ||
        echo "gpu_check yolo26: the fine-tuning step ended with $?"
    keep
    tail -40 "$out/yolo26_ft.log"
    ;;
*)
    echo "usage: scripts/gpu_check.sh prepare | run [OUT] | yolo26 [OUT]" >&2
    exit 2
    ;;
esac
