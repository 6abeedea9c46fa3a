"""Export of TOOD models: ONNX (standard ops, dynamic shapes, embedded NMS) and TorchScript parity with PyTorch.

A randomly initialised TOOD head scores about 0.01 everywhere and barely moves its samples (offsets std 0.001), so the
model's head is re-initialised with larger weights first: scores then spread over [0, 1] and the re-sampling offsets
reach a few pixels, past the feature-map borders, so GridSample's bilinear weights and zero padding are exercised.
Parity is checked on the raw (1, 4 + nc, A) output, tensor-wise: scores within 1e-4, boxes within 1e-2 px.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import numpy as np
import pytest
import torch
from ultralytics import YOLO
from ultralytics.nn.modules import DFL

from yolo_tood.data import shared_datasets
from yolo_tood.integration.export import check_export_args, on_export_start
from yolo_tood.nn.head import TOODDetect
from yolo_tood.nn.tap_head import TAPDetect

ROOT = Path(__file__).resolve().parents[1]
DATASETS = shared_datasets(Path(__file__).resolve().parents[1])
IMAGES = (
    sorted((DATASETS / "coco128" / "images" / "train2017").glob("*.jpg"))[:2]
    + sorted((DATASETS / "bccd" / "images" / "test").glob("*.jpg"))[:1]
)
SIZES = (96, 160)  # two input sizes; the dynamic ONNX file serves both, and a rectangular (h, w) one
RECT = (96, 160)  # h != w: a swap of x and y in GridSample's normalised grid would show here
SCORE_TOL, BOX_TOL = 1e-4, 1e-2  # probabilities; pixels
# TAPDetect's perturbed stock branches (BatchNorm, no GroupNorm re-scaling) predict boxes of up to ~1,000 px, where
# onnxruntime's and PyTorch's float32 convolutions differ by up to 4.5e-4 of the box's largest coordinate (0.15 px on
# a 330 px box at 160 px input, measured on 5 of 525 anchors); a relative bound of 1e-3 for TAP boxes
TAP_BOX_RTOL = 1e-3

needs_images = pytest.mark.skipif(not IMAGES, reason=f"real images under {DATASETS} (set YOLO_TOOD_SHARED) are absent")
ort = pytest.importorskip("onnxruntime")


def _onnx_nodes(path: str | Path) -> list:
    """Return every node of an ONNX graph, including those inside sub-graphs (If/Loop/Scan bodies)."""
    import onnx

    def walk(graph):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                yield from (n for g in ((attr.g,) if attr.HasField("g") else ()) + tuple(attr.graphs) for n in walk(g))

    return list(walk(onnx.load(str(path), load_external_data=False).graph))


def onnx_op_types(path: str | Path) -> set[str]:
    """Return the distinct op types of an ONNX graph, including those inside sub-graphs (e.g. ``nms=True`` loops).

    Args:
        path (str | Path): ONNX file.

    Returns:
        (set[str]): Op types such as ``{"Conv", "GridSample", ...}``.

    Examples:
        >>> "GridSample" in onnx_op_types("yolov8n-tood.onnx")
        True
    """
    return {n.op_type for n in _onnx_nodes(path)}


def nonstandard_ops(path: str | Path) -> set[str]:
    """Return the op types of an ONNX graph outside the standard ``ai.onnx`` domain (empty for a portable graph).

    Args:
        path (str | Path): ONNX file.

    Returns:
        (set[str]): ``"domain::op_type"`` strings, e.g. ``{"com.microsoft::FusedConv"}``; empty when all are standard.
    """
    return {f"{n.domain}::{n.op_type}" for n in _onnx_nodes(path) if n.domain not in ("", "ai.onnx")}


def perturb_head(head: TOODDetect, seed: int = 0) -> None:
    """Re-initialise the head so its outputs are far from the prior: varied scores, offsets of a few pixels."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if p.dim() > 1 and p.requires_grad:  # conv weights, not DFL's fixed bin values
                std = 0.3 if name.startswith(("reg_offset", "cls_decomp.layer_attention", "reg_decomp.layer")) else 0.1
                p.copy_(torch.randn(p.shape, generator=g) * std)
        head.tood_cls.bias.zero_()  # off the 0.01 prior, so the scores spread over [0, 1]
        for m in (head.cls_prob, head.dgqp and head.dgqp.reg_conf):  # M from the features and/or the distribution
            if m is not None:
                m[-1].bias.zero_()
        for s in head.scales:
            s.scale.fill_(1.3)  # not the identity, so an inference path that dropped the Scale would show


def load_image(path: Path, size: int | tuple[int, int]) -> torch.Tensor:
    """Return the image as a (1, 3, h, w) RGB float tensor in [0, 1] (plain resize; parity needs no letterbox)."""
    import cv2

    h, w = (size, size) if isinstance(size, int) else size
    im = cv2.resize(cv2.imread(str(path)), (w, h))[:, :, ::-1].transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(im)).float()[None] / 255


def assert_parity(ref: np.ndarray, out: np.ndarray, what: str, box_rtol: float = 0.0) -> tuple[float, float]:
    """Assert boxes (rows :4, pixels) and scores (rows 4:) of two (1, 4 + nc, A) outputs agree; return max diffs.

    Boxes agree within BOX_TOL px, or within ``box_rtol`` of the box's largest coordinate where that is larger.
    """
    assert ref.shape == out.shape, (what, ref.shape, out.shape)
    diff = np.abs(ref[:, :4] - out[:, :4])
    box, score = diff.max(), np.abs(ref[:, 4:] - out[:, 4:]).max()
    box_ok = (diff <= np.maximum(BOX_TOL, box_rtol * np.abs(ref[:, :4]).max(1, keepdims=True))).all()
    assert box_ok and score <= SCORE_TOL, f"{what}: max |diff| boxes {box:.2e} px, scores {score:.2e}"
    return float(box), float(score)


def perturb_tap_head(head: TAPDetect, seed: int = 0) -> None:
    """Re-initialise a TAPDetect head off its no-op start: fan-in scaled convs, offsets of a few pixels, spread scores.

    Fan-in scaling (std 1 / sqrt(fan-in)) keeps the stock branches' activations of order 1 (their BatchNorms are at
    the identity statistics); the last offset convs are scaled up so that samples move past cell borders.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in head.named_parameters():
            if p.dim() == 4 and p.requires_grad:  # conv weights, not DFL's fixed bin values
                gain = 1.5 if name.startswith("reg_offset") and name.endswith("2.weight") else 1.0
                p.copy_(torch.randn(p.shape, generator=g) * gain / p[0].numel() ** 0.5)
        for branch in (*head.cv3, *(head.cls_prob or ())):
            branch[-1].bias.zero_()  # scores spread over [0, 1]


def calibrate_batchnorms(model: torch.nn.Module, images: list[Path], imgsz: int | tuple[int, ...] = SIZES) -> None:
    """Give every BatchNorm the statistics of real images, as after training (one batch of ``images``).

    An untrained backbone's features reach the head near 0, and the stock branches' BatchNorms (identity statistics)
    keep them there: every TAPDetect score would be sqrt(0.5 * 0.5) = 0.5, tied, and the pre-NMS bound's k-th score
    a float tie. Statistics of random noise instead of images blow real images' features up (scores saturate at 0
    and 1, ties again). Normalised features of real images spread the scores over (0, 1).
    """
    sizes = (imgsz,) if isinstance(imgsz, int) else imgsz
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.reset_running_stats()
            bn.momentum = None  # a cumulative average: the statistics of these batches
        for size in sizes:  # every size the parity is checked at (statistics of one size blow another's features up)
            x = torch.cat([load_image(i, size) for i in images]) if images else torch.rand(2, 3, size, size)
            model.train()(x)
        model.eval()


@pytest.fixture(scope="module", params=["tood", "tap"])
def checkpoint(request, tmp_path_factory) -> Path:
    """A yolov8n checkpoint (nc=80, perturbed head) saved as ultralytics saves models, i.e. best.pt-like.

    ``tood`` is the T-Head (TOODDetect), ``tap`` the stock head with the task-aligned predictor (TAPDetect).
    """
    torch.manual_seed(0)
    yolo = YOLO(ROOT / "cfg" / f"yolov8n-{request.param}.yaml")
    head = yolo.model.model[-1]
    if request.param == "tood":
        perturb_head(head)
    else:
        perturb_tap_head(head)
        calibrate_batchnorms(yolo.model, IMAGES)
    path = tmp_path_factory.mktemp(f"export_{request.param}") / f"{request.param}.pt"
    yolo.save(path)
    return path


@pytest.fixture(scope="module")
def torch_model(checkpoint):
    """The checkpoint's model as ultralytics predicts with it: float, eval, fused."""
    return YOLO(checkpoint).model.float().eval().fuse(verbose=False)


def run_torch(model, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(x)[0].numpy()


@pytest.mark.parametrize("reg_max", [16, 1])
def test_inference_path_equals_training_path(reg_max):
    """Eval mode (plain score form, DFLExpectation) computes exactly what training mode and ultralytics' DFL do."""
    torch.manual_seed(0)
    head = TOODDetect(nc=5, feat_channels=32, stacked_convs=3, reg_max=reg_max, ch=(16, 32, 64))
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    perturb_head(head)
    x = [torch.randn(2, c, 96 // s, 96 // s) for c, s in zip((16, 32, 64), (8, 16, 32))]
    with torch.no_grad():
        for level, t in enumerate(x):
            for ref, fast in zip(head.train().forward_level(t, level), head.eval().forward_level(t, level)):
                torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)
        y, preds = head.eval()(x)
        if reg_max > 1:
            stock = DFL(reg_max)(preds["boxes"])
            torch.testing.assert_close(head.dfl(preds["boxes"]), stock)
            with mock.patch("torch.onnx.is_in_onnx_export", return_value=True):  # the ONNX form of the expectation
                torch.testing.assert_close(head.dfl(preds["boxes"]), stock)
    assert y.shape == (2, 4 + 5, 12 * 12 + 6 * 6 + 3 * 3) and 0.05 < y[:, 4:].std()  # scores spread out


@needs_images
def test_onnx_dynamic_parity_and_standard_ops(checkpoint, torch_model):
    """One dynamic ONNX file (onnxslim on) matches PyTorch at three sizes, with only standard ops incl. GridSample."""
    f = YOLO(checkpoint).export(format="onnx", imgsz=max(SIZES), dynamic=True, simplify=True, opset=17)
    ops = onnx_op_types(f)
    assert "GridSample" in ops and not nonstandard_ops(f), (sorted(ops), nonstandard_ops(f))
    session = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    for size in (*SIZES, RECT):
        for image in IMAGES:
            x = load_image(image, size)
            out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
            tol = TAP_BOX_RTOL if checkpoint.stem == "tap" else 0.0
            assert_parity(run_torch(torch_model, x), out, f"onnx {size}px {image.name}", tol)
    # ultralytics' own ONNX backend (as `yolo predict model=tood.onnx`) loads and runs the file
    results = YOLO(f, task="detect").predict(IMAGES[0], imgsz=max(SIZES), conf=0.5, verbose=False)
    assert results[0].boxes.data.shape[1] == 6


@needs_images
@pytest.mark.parametrize("size", SIZES)
def test_torchscript_parity(checkpoint, torch_model, size):
    """TorchScript (traced at a fixed size, as ultralytics exports it) matches PyTorch."""
    f = YOLO(checkpoint).export(format="torchscript", imgsz=size)
    ts = torch.jit.load(f)
    for image in IMAGES:
        x = load_image(image, size)
        with torch.inference_mode():
            out = ts(x).numpy()
        tol = TAP_BOX_RTOL if checkpoint.stem == "tap" else 0.0
        assert_parity(run_torch(torch_model, x), out, f"torchscript {size}px {image.name}", tol)


def test_onnx_nms_export(checkpoint):
    """nms=True embeds NMS: onnxruntime returns (1, max_det, 6) rows [x1, y1, x2, y2, score, class]."""
    f = YOLO(checkpoint).export(format="onnx", imgsz=128, nms=True, conf=0.3)
    session = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    x = load_image(IMAGES[0], 128) if IMAGES else torch.rand(1, 3, 128, 128)
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert out.shape == (1, 300, 6)
    kept = out[0, out[0, :, 4] > 0]
    assert len(kept) and (kept[:, 4] > 0.3).all() and (kept[:, 2:4] >= kept[:, :2]).all()  # xyxy, above conf


def test_low_opset_is_rejected_before_export(checkpoint):
    """opset=13 fails with one clear line before anything is written; opset >= 16 and non-ONNX formats pass."""
    onnx_file = checkpoint.with_suffix(".onnx")
    onnx_file.unlink(missing_ok=True)
    with pytest.raises(ValueError, match=r"opset>=16 .*GridSample.*opset=13") as e:
        YOLO(checkpoint).export(format="onnx", imgsz=64, opset=13)
    assert "\n" not in str(e.value) and not onnx_file.exists()
    check_export_args("onnx", 16)
    check_export_args("onnx", None)  # the exporter's default opset is >= 17
    check_export_args("torchscript", 13)
    with pytest.raises(ValueError, match="hailo"):
        check_export_args("hailo", None)  # pins opset 11
    stock = SimpleNamespace(args=SimpleNamespace(format="onnx", opset=13), model=torch.nn.Conv2d(3, 3, 1))
    on_export_start(stock)  # models without a TOOD head are not this package's business


def test_cli_low_opset_error(checkpoint):
    """The stock `yolo export` command reports the same one-line error (the start-up hook registers the check)."""
    yolo = Path(sys.executable).with_name("yolo")
    if not yolo.exists():
        pytest.skip("no yolo entry point next to this interpreter")
    cmd = [str(yolo), "export", f"model={checkpoint}", "format=onnx", "opset=13", "imgsz=64"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "ValueError: TOOD models need ONNX opset>=16" in r.stderr + r.stdout


def test_sepbn_head_onnx_parity(tmp_path):
    """A norm="sepbn" model (per-level BatchNorm with trained statistics) exports to ONNX and matches PyTorch."""
    import yaml

    torch.manual_seed(0)
    cfg = yaml.safe_load((ROOT / "cfg" / "yolov8-tood.yaml").read_text())
    cfg["head"][-1][3] = ["nc", 256, 3, "sepbn"]
    path = tmp_path / "yolov8n-tood-sepbn.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    yolo = YOLO(path)
    head = yolo.model.model[-1]
    perturb_head(head)
    bns = [m for m in head.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not any(isinstance(m, torch.nn.GroupNorm) for m in head.modules())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # per-level statistics as after training: cumulative averages over a few batches
        for bn in bns:
            bn.momentum = None
        yolo.model.train()
        for _ in range(3):
            yolo.model(torch.rand(2, 3, 96, 96, generator=g))
        yolo.model.eval()
    assert not torch.allclose(bns[0].running_var, torch.ones_like(bns[0].running_var))
    ckpt = tmp_path / "sepbn.pt"
    yolo.save(ckpt)
    f = YOLO(ckpt).export(format="onnx", imgsz=96, opset=17)
    session = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 96, 96, generator=g)
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert_parity(run_torch(YOLO(ckpt).model.float().eval().fuse(verbose=False), x), out, "sepbn onnx 96px")


def test_plain_distance_head_onnx_parity(tmp_path):
    """A ``reg_max: 1`` TOOD model (distances Scale(exp(x)), as the reference) exports to ONNX and matches PyTorch."""
    import yaml

    torch.manual_seed(0)
    cfg = yaml.safe_load((ROOT / "cfg" / "yolov8-tood.yaml").read_text())
    cfg["reg_max"] = 1
    cfg["head"][-1][3][-1] = "features"  # M from the features: reg_max 1 has no box distribution for DGQP
    path = tmp_path / "yolov8n-tood-plain.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    yolo = YOLO(path)
    head = yolo.model.model[-1]
    assert head.reg_max == 1
    perturb_head(head)
    ckpt = tmp_path / "plain.pt"
    yolo.save(ckpt)
    f = YOLO(ckpt).export(format="onnx", imgsz=96, opset=17)
    assert "Exp" in onnx_op_types(f)
    session = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert_parity(run_torch(YOLO(ckpt).model.float().eval().fuse(verbose=False), x), out, "reg_max 1 onnx 96px")


@needs_images
@pytest.mark.parametrize(
    "args", [["box_to_cls"], ["none", "distribution"], ["none", "both"]], ids=["box_to_cls", "distribution", "both"]
)
def test_tap_head_variant_onnx_parity(tmp_path, args):
    """A TAPDetect model with ``interact: box_to_cls`` or an M that reads the box distribution (``quality``),
    trained-like (off its no-op start), matches PyTorch in ONNX."""
    import yaml

    torch.manual_seed(0)
    cfg = yaml.safe_load((ROOT / "cfg" / "yolov8-tap.yaml").read_text())
    cfg["head"][-1][3] = ["nc", "faithful", *args]
    path = tmp_path / f"yolov8n-tap-{'_'.join(args)}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    yolo = YOLO(path)
    head = yolo.model.model[-1]
    assert (head.cls_from_box is not None) == (args[0] == "box_to_cls") and (head.dgqp is not None) == (len(args) > 1)
    perturb_tap_head(head)  # every conv weight, cls_from_box's included, off zero
    calibrate_batchnorms(yolo.model, IMAGES, 96)
    ckpt = tmp_path / "variant.pt"
    yolo.save(ckpt)
    f = YOLO(ckpt).export(format="onnx", imgsz=96, opset=17)
    session = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    x = load_image(IMAGES[0], 96)
    out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    ref = run_torch(YOLO(ckpt).model.float().eval().fuse(verbose=False), x)
    assert_parity(ref, out, f"{'_'.join(args)} onnx 96px", TAP_BOX_RTOL)
