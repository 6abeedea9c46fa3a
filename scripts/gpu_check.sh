#!/usr/bin/env bash
# The GPU checks of yolo-tood in one command (never in CI). Two steps:
#
#   scripts/gpu_check.sh prepare      # here, with a package registry: the wheels ultralytics needs beyond what the GPU
#                                     # machine has (.whl/) and a copy of one dataset (.gpu/road_traffic), both ignored
#   scripts/gpu_check.sh run [OUT]    # on the GPU machine, from the repository root: installs the project and the
#                                     # wheels offline, runs scripts/gpu_check.py (at most ~8 min on one H200), writes
#                                     # OUT/gpu_check.json (default: $OUT, else runs/gpu_check)
#   scripts/gpu_check.sh yolo26 [OUT] # on the GPU machine: the YOLO26 evidence (issue: YOLO26 with TOOD) in parallel
#                                     # lanes, cut at LIMIT (530) s: a stock yolo26n trained on road_traffic (30 epochs,
#                                     # 320 px), BCCD fine-tuning from it (stock vs tap, seeds 0-2, 15 epochs) and BCCD
#                                     # from scratch (stock vs tap vs tood, seeds 0-2, 60 epochs); val and test, with and
#                                     # without NMS (yolo-tood compare through scripts/gpu_compare.py, one call per run;
#                                     # join with yolo-tood merge). run(..., timeout_s=600). Reports land flat in OUT
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
    # The issue's YOLO26 evidence in parallel lanes (one training is bound by its main thread, not by the H200), each
    # lane one `compare` call per (model, seed) into its own --out, joined afterwards with `yolo-tood merge`:
    #   source: stock yolo26n on road_traffic (30 epochs), then fine-tuning lanes on BCCD from it, stock vs tap,
    #           one lane per seed (stock then tap), 15 epochs;
    #   scratch: BCCD from scratch, stock vs tap vs tood, 60 epochs (recipe 9), seeds 0 and 1 in six lanes, then seed 2.
    # Val and test, with NMS and NMS-free. Every lane stops at LIMIT seconds; what finished is copied to OUT.
    work=runs/gpu_yolo26 limit="${LIMIT:-530}" w="${WORKERS:-2}"
    common=(--family yolo26 --scale n --imgsz "${IMGSZ:-320}" --batch 16 --device "${DEVICE:-0}" --workers "$w")
    common+=(--no-plots)
    out=$(cd "$out" && pwd)
    end=$((SECONDS + limit))
    one() { # <out> <data> <epochs> <model> <seed> [args...]: one compare call, cut at the common deadline
        local dir=$1 data=$2 epochs=$3 model=$4 seed=$5
        shift 5
        local left=$((end - SECONDS))
        [ "$left" -gt 20 ] || return 1
        timeout "$left" python3 scripts/gpu_compare.py --data "$data" --epochs "$epochs" --models "$model" \
            --seeds "$seed" "${common[@]}" --out "$work/$dir" "$@" >>"$out/$dir.log" 2>&1 || return
        cp "$work/$dir/compare.json" "$out/${dir}_${model}.compare.json" # at once: a later cut keeps it
    }
    bccd=.gpu/bccd/bccd.yaml
    src="$work/source/runs/stock_s0/weights/best.pt"
    ft() { # the fine-tuning lane of one seed, once the source checkpoint exists
        for model in stock tap; do one "ft_s$1" "$bccd" "${FT_EPOCHS:-15}" "$model" "$1" --pretrained "$src" || return; done
    }
    (one source .gpu/road_traffic/road_traffic.yaml "${SRC_EPOCHS:-30}" stock 0 --val-only && {
        ft 0 &
        ft 1 &
        ft 2 &
        wait
    }) &
    for model in stock tap tood; do
        (one "scratch_${model}_s0" "$bccd" "${SCRATCH_EPOCHS:-60}" "$model" 0 &&
            one "scratch_${model}_s2" "$bccd" "${SCRATCH_EPOCHS:-60}" "$model" 2) &
        one "scratch_${model}_s1" "$bccd" "${SCRATCH_EPOCHS:-60}" "$model" 1 &
    done
    wait
    # the run records too, flat (ft_s0__runs__stock_s0__compare_run.json): the device tool returns no deep folders
    (cd "$work" && find . \( -name compare_run.json -o -name results.csv \) | while read -r f; do
        f="${f#./}" && cp "$f" "$out/${f//\//__}"
    done)
    grep -h "mAP50-95\|NMS time limit\|Error" "$out"/*.log | tail -60
    ;;
*)
    echo "usage: scripts/gpu_check.sh prepare | run [OUT] | yolo26 [OUT]" >&2
    exit 2
    ;;
esac
