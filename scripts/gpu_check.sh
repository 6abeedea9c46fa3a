#!/usr/bin/env bash
# The GPU checks of yolo-tood in one command (never in CI). Two steps:
#
#   scripts/gpu_check.sh prepare      # here, with a package registry: the wheels ultralytics needs beyond what the GPU
#                                     # machine has (.whl/) and a copy of one dataset (.gpu/road_traffic), both ignored
#   scripts/gpu_check.sh cost [OUT]   # on the GPU machine: only the launch table and the forward cost table
#                                     # (gpu_check.py --cost-only: random weights, a few minutes), same OUT
#   scripts/gpu_check.sh run [OUT]    # on the GPU machine, from the repository root: installs the project and the
#                                     # wheels offline, runs scripts/gpu_check.py (at most ~8 min on one H200), writes
#                                     # OUT/gpu_check.json (default: $OUT, else runs/gpu_check)
#   scripts/gpu_check.sh yolo26-ft [OUT]      # on the GPU machine: YOLO26 fine-tuning evidence (issue: YOLO26
#                                             # with TOOD): a stock yolo26n trained on road_traffic (30 epochs, 320
#                                             # px), then BCCD fine-tuning from it, stock vs tap, seeds 0-2 (15 epochs),
#                                             # in three lanes (one per seed)
#   scripts/gpu_check.sh yolo26-scratch SEED [OUT] # BCCD from scratch (60 epochs), stock vs tap vs tood, one seed,
#                                             # three lanes; one seed per call (three lanes of TAP / T-Head fill one
#                                             # 600 s call: 16 CPU cores, each training bound by its main thread)
#   Both: val and test, with and without NMS (yolo-tood compare through scripts/gpu_compare.py, one compare call per
#   run, cut at LIMIT (520) s), joined afterwards with yolo-tood merge; OUT gets one yolo26.tgz (the device tool
#   returns at most 8 files) and the logs. run(command="bash scripts/gpu_check.sh yolo26-ft", carry=[".whl", ".gpu"],
#   timeout_s=590): every call needs the carry, a warm machine included (an ignored path not carried is removed).
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
run | cost | yolo26-ft | yolo26-scratch)
    mode=$1 seed=0
    if [ "$mode" = yolo26-scratch ]; then
        seed=${2:?usage: scripts/gpu_check.sh yolo26-scratch SEED [OUT]}
        shift
    fi
    out="${2:-${OUT:-runs/gpu_check}}"
    mkdir -p "$out"
    # DEVICE=cpu (yolo26-*): the same steps on the CPU, as a smoke test of this script (with SRC_EPOCHS=1 ...)
    [ "${DEVICE:-0}" = cpu ] || python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)' || {
        echo "gpu_check: no CUDA device here; nothing to check"
        exit 0
    }
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    cp -r yolo_tood /tmp/site/ # the package itself; gpu_check.py imports it first, which registers the heads
    export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 YOLO_OFFLINE=1
    set -o pipefail
    if [ "$mode" = run ] || [ "$mode" = cost ]; then
        extra=()
        [ "$mode" = cost ] && extra=(--cost-only)
        python3 scripts/gpu_check.py --data .gpu/road_traffic/road_traffic.yaml --json "$out/gpu_check.json" \
            "${extra[@]}" 2>&1 |
            tee "$out/gpu_check.log"
        exit
    fi
    # One training is bound by its main thread, not by the H200: parallel lanes, each one `compare` call per
    # (model, seed) into its own --out. Measured with nine lanes at once (load 32 on 16 cores), stock trained at 5.3
    # s/epoch and TAP / T-Head at 15-16 s/epoch (BENCHMARKS 23c): hence three lanes per call.
    work=runs/gpu_yolo26 limit="${LIMIT:-520}"
    common=(--family yolo26 --scale n --imgsz "${IMGSZ:-320}" --batch 16 --device "${DEVICE:-0}")
    common+=(--workers "${WORKERS:-3}" --no-plots)
    out=$(cd "$out" && pwd)
    end=$((SECONDS + limit))
    one() { # <out> <data> <epochs> <model> <seed> [args...]: one compare call, cut at the common deadline
        local dir=$1 data=$2 epochs=$3 model=$4 seed=$5
        shift 5
        local left=$((end - SECONDS))
        [ "$left" -gt 20 ] || return 1
        timeout "$left" python3 scripts/gpu_compare.py --data "$data" --epochs "$epochs" --models "$model" \
            --seeds "$seed" "${common[@]}" --out "$work/$dir" "$@" >>"$out/$dir.log" 2>&1 || return
        cp "$work/$dir/compare.json" "$work/$dir/compare_$model.json" # the next call in this --out rewrites it
    }
    bccd=.gpu/bccd/bccd.yaml
    if [ "$mode" = yolo26-ft ]; then
        src="$work/source/runs/stock_s0/weights/best.pt"
        one source .gpu/road_traffic/road_traffic.yaml "${SRC_EPOCHS:-30}" stock 0 --val-only
        for s in 0 1 2; do
            (for model in stock tap; do
                one "ft_s$s" "$bccd" "${FT_EPOCHS:-15}" "$model" "$s" --pretrained "$src" || exit
            done) &
        done
    else
        for model in stock tap tood; do one "scratch_${model}_s$seed" "$bccd" "${SCRATCH_EPOCHS:-60}" "$model" "$seed" & done
    fi
    wait
    # one file: the device tool returns at most 8 files from OUT
    (cd "$work" && find . \( -name 'compare*.json' -o -name results.csv \) -print0 | tar czf "$out/yolo26.tgz" --null -T -)
    grep -h "mAP50-95 0\|NMS time limit\|Error" "$out"/*.log | tail -40
    ;;
*)
    echo "usage: scripts/gpu_check.sh prepare | run [OUT] | cost [OUT] | yolo26-ft [OUT] | yolo26-scratch SEED [OUT]" >&2
    exit 2
    ;;
esac
