#!/usr/bin/env bash
# The newcomer's path: run README.md's commands as a new user would, from a clean copy of this repository, outside it,
# in a fresh virtual environment. Install (CPU torch, then the package with its export extra), the demo, then
# `yolo train`, `yolo val`, `yolo predict`, `yolo export format=onnx` and `yolo predict` from the ONNX file, on the
# data the demo generates (nothing is downloaded). Exits non-zero at the first failure; removes its venv on exit.
#
#   scripts/newcomer.sh
#   TORCH_SPEC="torch==2.14.1 torchvision==0.29.1" EPOCHS=1 scripts/newcomer.sh   # torch from a local wheel cache
#
# Environment:
#   TORCH_SPEC  the arguments of the CPU torch install (default: README's, from PyTorch's CPU index)
#   EPOCHS      training epochs of the demo and of `yolo train` (default 1)
#   PYTHON      the interpreter that makes the venv (default python3)
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
TORCH_SPEC="${TORCH_SPEC:-torch torchvision --index-url https://download.pytorch.org/whl/cpu}"
EPOCHS="${EPOCHS:-1}"
PYTHON="${PYTHON:-python3}"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT  # the venv is about 6 GB (torch): never leave one behind
start=$SECONDS
step() { printf '\n== newcomer [%ds]: %s\n' "$((SECONDS - start))" "$*"; }

# A clean copy: the files git tracks (and new ones it does not ignore), without runs, weights or caches.
step "copy $repo to $tmp/yolo-tood"
src="$tmp/yolo-tood"
mkdir -p "$src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | tar --null -T - -cf -) | tar -xf - -C "$src"

# Outside the repository, as a user who cloned it somewhere else.
work="$tmp/work"
mkdir -p "$work"
cd "$work"

step "venv"
"$PYTHON" -m venv "$tmp/venv"
# shellcheck disable=SC1091
. "$tmp/venv/bin/activate"
python -m pip install --quiet --upgrade pip

# README, "Install": CPU torch first, then the package with the ONNX export extra.
step "pip install $TORCH_SPEC"
# shellcheck disable=SC2086  # TORCH_SPEC is a list of pip arguments
pip install --quiet $TORCH_SPEC
step "pip install \"$src[export]\""
pip install --quiet "$src[export]"
command -v yolo yolo-tood

# README, "The demo".
step "python -m yolo_tood.demo --epochs $EPOCHS"
python -m yolo_tood.demo --epochs "$EPOCHS" --train-images 32 --val-images 8 --out demo
data="$work/demo/shapes/shapes.yaml"
test -f "$data"
test -f demo/train/weights/best.pt
ls demo/predict/*.jpg >/dev/null

# README, "Use it": the stock `yolo` command with a TOOD model name.
step "yolo train model=yolov8n-tap.yaml"
yolo train model=yolov8n-tap.yaml data="$data" epochs="$EPOCHS" imgsz=64 batch=8 workers=0 device=cpu \
    project="$work/runs" name=train exist_ok=True
best="$work/runs/train/weights/best.pt"
test -f "$best"

step "yolo val"
yolo val model="$best" data="$data" imgsz=64 batch=8 workers=0 device=cpu project="$work/runs" name=val exist_ok=True

step "yolo predict"
yolo predict model="$best" source="$work/demo/shapes/images/val" imgsz=64 device=cpu \
    project="$work/runs" name=predict exist_ok=True
ls runs/predict/*.jpg >/dev/null

step "yolo export format=onnx"
yolo export model="$best" format=onnx imgsz=64
test -f "$work/runs/train/weights/best.onnx"

step "yolo predict from the ONNX file"
yolo predict model="$work/runs/train/weights/best.onnx" source="$work/demo/shapes/images/val" imgsz=64 device=cpu \
    project="$work/runs" name=predict_onnx exist_ok=True
ls runs/predict_onnx/*.jpg >/dev/null

# README, "Use it" (Python) and "Tools": a fresh process loads the checkpoint without importing yolo_tood.
step "Python API and yolo-tood --help"
python -c "from ultralytics import YOLO; r = YOLO('$best').predict('$work/demo/shapes/images/val', imgsz=64); \
print(len(r), 'images predicted')"
yolo-tood --help >/dev/null

step "done: every README command ran"
