"""Export without the ``export`` extra: a TOOD model's ONNX-based export stops before any work with one line naming the
missing packages and ``pip install "yolo-tood[export]"``; stock models keep ultralytics' behaviour.

The missing modules are simulated (``sys.modules[name] = None`` in a subprocess, ``find_spec`` patched in-process), so
these tests run whether or not onnx is installed (unlike tests/test_export.py, which needs onnxruntime).
"""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from yolo_tood.integration import export
from yolo_tood.integration.export import check_export_packages, missing_export_packages, on_export_start

FIX = 'pip install "yolo-tood[export]" (or pip install ".[export]" from a clone)'


def without(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make the export checks see ``names`` as not installed."""
    real = export.find_spec
    monkeypatch.setattr(export, "find_spec", lambda name: None if name in names else real(name))


def test_missing_packages_follow_the_exporter(monkeypatch):
    """onnx always; onnxruntime and onnxslim to simplify (forced by the TensorFlow formats); none without ONNX."""
    without(monkeypatch, "onnx", "onnxruntime", "onnxslim")
    assert missing_export_packages("onnx") == ["onnx", "onnxruntime", "onnxslim"]
    assert missing_export_packages("onnx", simplify=False) == ["onnx"]
    assert missing_export_packages("onnx", simplify=False, quantize=8) == ["onnx", "onnxruntime"]
    assert missing_export_packages("saved_model", simplify=False) == ["onnx", "onnxruntime", "onnxslim"]
    assert missing_export_packages("engine", simplify=False) == ["onnx"]
    assert missing_export_packages("torchscript") == []
    check_export_packages("coreml")  # no ONNX step: nothing to say


def test_one_line_names_the_missing_and_the_extra(monkeypatch):
    without(monkeypatch, "onnxslim")
    with pytest.raises(ModuleNotFoundError) as e:
        check_export_packages("engine")
    assert (
        str(e.value)
        == f"format=engine export needs onnxslim, which is not installed; install yolo-tood's export extra: {FIX}"
    )
    assert e.value.name == "onnxslim"


def test_stock_models_are_left_to_ultralytics(monkeypatch):
    """The hook only speaks for TOOD heads: a stock model's export goes on to ultralytics' own requirement check."""
    without(monkeypatch, "onnx")
    stock = SimpleNamespace(
        args=SimpleNamespace(format="onnx", opset=None, simplify=True), model=torch.nn.Conv2d(3, 3, 1)
    )
    on_export_start(stock)


def test_cli_export_without_onnx_stops_in_one_line(tmp_path):
    """`yolo export` of a TOOD model with onnx and onnxslim absent ends with the one line, and writes no file."""
    code = (
        "import sys; sys.modules['onnx'] = sys.modules['onnxslim'] = None\n"  # import fails, as when not installed
        "import yolo_tood\n"
        "from ultralytics.cfg import entrypoint\n"
        "entrypoint('yolo export model=yolov8n-tood.yaml format=onnx imgsz=64')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last == (
        "ModuleNotFoundError: format=onnx export needs onnx and onnxslim, which are not installed; "
        f"install yolo-tood's export extra: {FIX}"
    )
    assert not list(tmp_path.rglob("*.onnx"))
