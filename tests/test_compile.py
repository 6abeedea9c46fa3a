"""``torch.compile`` (ultralytics' ``compile=True``): the heads' forward is one graph, with no graph break.

A graph break splits what the compiler fuses and replays; host syncs, data-dependent shapes and Python branches on
tensor values cause them. ``torch._dynamo.explain`` lists them without compiling. The first call at a new input size
breaks in ultralytics' own ``make_anchors`` (stock's head too: it reads each stride on the host), so every model is
called once first, as a compiled model is on its first batch.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from helpers import load_script

bl = load_script("bench_launches")
dynamo = pytest.importorskip("torch._dynamo", reason="torch.compile is not available in this torch build")

MODELS = [("yolov8", "tap", None), ("yolov8", "tood", None), ("yolo11", "tap", None), ("yolo11", "tood", None)]
MODELS += [("yolo26", head, end2end) for head in ("tap", "tood") for end2end in (None, False)]


def _breaks(model, x: torch.Tensor) -> list[str]:
    """The graph breaks of ``model(x)`` after one warm-up call (their reasons, with where they happen)."""
    with torch.set_grad_enabled(model.training):
        model(x)
        dynamo.reset()
        explained = dynamo.explain(model)(x)
    return [
        f"{r.reason.splitlines()[0]} at {r.user_stack[-1] if r.user_stack else '?'}" for r in explained.break_reasons
    ]


@pytest.mark.parametrize("family,head,end2end", MODELS)
@pytest.mark.parametrize("mode", ["fused", "eval", "train"])
def test_the_forward_has_no_graph_break(family, head, end2end, mode):
    model = bl.build(family, "n", head, end2end, nc=3)
    if mode == "fused":
        model = model.eval().fuse(verbose=False)
    model = model.train(mode == "train")
    assert _breaks(model, torch.rand(2, 3, 64, 96)) == []


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cl") is None, reason="no C++ compiler for inductor")
def test_a_compiled_tap_model_gives_the_eager_outputs():
    model = bl.build("yolov8", "n", "tap", nc=3).eval().fuse(verbose=False)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)[0]
        compiled = torch.compile(model)(x)[0]
    torch.testing.assert_close(compiled, expected, atol=1e-4, rtol=1e-4)
