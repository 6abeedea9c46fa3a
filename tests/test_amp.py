"""Mixed precision: CUDA AMP (fp16 / bf16 autocast around forward + loss) emulated with CPU autocast.

The TOOD loss must be computed in float32 whatever the autocast state, give no NaN and raise nothing on degenerate
batches, and stay within a stated tolerance of the fp32 loss; the head's re-sampling grid and its scores are float32.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import load_script
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.torch_utils import autocast

from yolo_tood.data import shared_datasets
from yolo_tood.nn.head import aligned_score, inference_score, resample_by_offsets
from yolo_tood.train.loss import TOODLoss, centerness

ROOT = Path(__file__).resolve().parents[1]
CFG = ROOT / "cfg" / "yolov8n-tood.yaml"
COCO128 = shared_datasets(ROOT) / "coco128" / "coco128.yaml"
LOW = {"fp16": torch.float16, "bf16": torch.bfloat16}


fuzz_amp = load_script("fuzz_amp")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_fuzz_amp_no_failure_and_loss_close_to_fp32(precision):
    """Two rounds of every batch kind (tiny, huge, outside, duplicated, empty, 1,000 GTs, saturated, zero-size)."""
    res = fuzz_amp.fuzz(2 * len(fuzz_amp.KINDS), 64, 2, 80, 0, [precision], ["atss", "tal"])
    for phase in ("atss", "tal"):
        s = res[f"{precision}/{phase}"]
        assert s["batches"] == 2 * len(fuzz_amp.KINDS)
        assert s["failures"] == 0, s["errors"]
        # The loss computation itself is fp32: the autocast loss equals the fp32 loss of the same predictions (to
        # 1e-4 relative; before the fix it was off by 0.09 in fp16 and 0.36-1.0 in bf16)
        assert s["loss_only"] < 1e-4, s
    # End to end the fp16/bf16 convolutions move the predictions. The ATSS assignment does not depend on them, so
    # the loss stays within 1% (measured: 0.4% fp16, 0.2% bf16); TAL re-assigns when the predictions move (a few
    # batches with few positives differ by 10-25%), so only its median is bounded: 2% fp16, 5% bf16 (8-bit mantissa;
    # measured about 0.5% and 2.7% at 64 px).
    assert res[f"{precision}/atss"]["end_to_end_max"] < 0.01, res
    assert res[f"{precision}/tal"]["end_to_end_median"] < {"fp16": 0.02, "bf16": 0.05}[precision], res


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_fuzz_amp_tap_head_with_the_distribution_quality(precision):
    """The same fuzz (one round) on a TAP head whose M reads features and distribution (``quality: both``)."""
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load("yolov8n-tap.yaml")
    cfg["head"][-1][3] = ["nc", "faithful", "none", "both"]
    res = fuzz_amp.fuzz(len(fuzz_amp.KINDS), 64, 2, 80, 0, [precision], ["atss", "tal"], cfg)
    for phase in ("atss", "tal"):
        s = res[f"{precision}/{phase}"]
        assert s["batches"] == len(fuzz_amp.KINDS) and s["failures"] == 0, s["errors"]
        assert s["loss_only"] < 1e-4, s


@pytest.mark.parametrize("kind", ["tap", "tood"])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_fuzz_amp_yolo26(kind, precision):
    """The same fuzz (one round) on YOLO26 (end-to-end: both branches, TOODLoss inside ultralytics' E2ELoss)."""
    res = fuzz_amp.fuzz(len(fuzz_amp.KINDS), 64, 2, 80, 0, [precision], ["atss", "tal"], f"yolo26n-{kind}.yaml")
    for phase in ("atss", "tal"):
        s = res[f"{precision}/{phase}"]
        assert s["batches"] == len(fuzz_amp.KINDS) and s["failures"] == 0, s["errors"]
        assert s["loss_only"] < 1e-4, s


def test_aligned_score_saturated_fp16_logits_give_finite_fp32_gradients():
    """A negative of score 1 - 6e-6: in fp16 its log-sigmoid sum was a subnormal and the score rounded to 1."""
    grads = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        cls = torch.full((4,), 12.0, dtype=dtype, requires_grad=True)
        prob = torch.full((4,), 12.0, dtype=dtype, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.float16):
            score = aligned_score(cls, prob)
            loss = -(1 - score).log().sum()  # the BCE of a negative, 1 / (1 - score) = 1.6e5 into the score
        assert score.dtype == torch.float32 and score.max() < 1
        loss.backward()
        assert torch.isfinite(cls.grad).all() and torch.isfinite(prob.grad).all()
        grads.append(cls.grad.float())
    # d/dcls = 0.5 * s * (1 - sig(cls)) / (1 - s) ~ 0.5: the same in every dtype (the logit 12 is exact in all)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=0)
    torch.testing.assert_close(grads[2], grads[0], rtol=1e-3, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_resample_grid_is_fp32_for_low_precision_predictions(dtype):
    """A ramp pred = x - 40 on an 80-wide map sampled at x + 0.25: every value is exact in fp16 and bf16."""
    h, w = 4, 80
    ramp = (torch.arange(w, dtype=torch.float32) - 40).expand(1, 4, h, w)
    offsets = torch.zeros(1, 8, h, w)
    offsets[:, 1::2] = 0.25  # dx of every group
    out = resample_by_offsets(ramp.to(dtype), offsets.to(dtype))
    assert out.dtype == dtype
    err = (out.float() - (ramp + 0.25))[..., : w - 1].abs().max()  # the last column samples the zero padding
    assert err < 0.01, f"position error {float(err):.3f} px"  # a grid in bf16 gives 0.3-0.5 px, in fp16 0.06 px


def test_inference_score_fp16_relative_error():
    """Scores 1e-3 - 1e-2: the product of the two sigmoids is a subnormal in fp16, so it is formed in fp32."""
    target = torch.logspace(-3, -2, 50)
    logit = torch.logit(target)  # sig(cls) = sig(M) = score
    ref = inference_score(logit, logit)
    torch.testing.assert_close(ref, target, rtol=1e-5, atol=0)
    low = inference_score(logit.half(), logit.half())
    assert low.dtype == torch.float16
    rel = ((low.float() - ref) / ref).abs().max()
    assert rel < 2e-3, rel  # the fp16 rounding of the logits and of the score (about 1e-3); 1.7% before


def test_centerness_of_sub_pixel_box_in_fp16_is_finite():
    """The 1e-9 guard is 0 in fp16: a point on the border of a 0.02 px box gave 0 / 0."""
    points = torch.tensor([[10.0, 10.0]], dtype=torch.float16)
    boxes = torch.tensor([[10.0, 10.0, 10.0, 10.02]], dtype=torch.float16)
    c = centerness(points, boxes)
    assert c.dtype == torch.float32 and torch.isfinite(c).all()


@pytest.fixture(scope="module", params=["tood", "tap"])
def model(request):
    """A yolov8n TOOD (T-Head) or TAP (stock head + task-aligned predictor) model in training mode."""
    torch.manual_seed(0)
    m = DetectionModel(str(CFG.with_name(f"yolov8n-{request.param}.yaml")), nc=80, verbose=False).train()
    m.args = get_cfg()
    return m


@pytest.mark.parametrize("phase", [0, None], ids=["atss", "tal"])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_loss_inside_autocast_equals_fp32_loss_of_same_predictions(model, precision, phase):
    model.model[-1].epoch = phase  # 0: inside the warm-up (a third of get_cfg()'s epochs)
    batch = fuzz_amp.make_batch("tiny" if phase == 0 else "huge", torch.Generator().manual_seed(1), 2, 64, 80)
    criterion = TOODLoss(model)
    with torch.autocast("cpu", dtype=LOW[precision]):
        preds = model(batch["img"])
        loss, _ = criterion(preds, batch)
    assert preds["boxes"].dtype == LOW[precision]  # the head's convolutions stay in the autocast dtype
    assert preds["scores"].dtype == torch.float32
    assert loss.dtype == torch.float32
    ref, _ = criterion({k: v.detach().float() if k != "feats" else v for k, v in preds.items()}, batch)
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-6, atol=1e-6)
    model.model[-1].epoch = None


def _coco128_batch(imgsz: int = 64, batch: int = 8) -> dict:
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset(str(COCO128))
    cfg = get_cfg(overrides={"imgsz": imgsz, "batch": batch})
    dataset = build_yolo_dataset(cfg, data["train"], batch, data, mode="val")  # no random augmentation
    b = next(iter(build_dataloader(dataset, batch, workers=0, shuffle=False)))
    b["img"] = b["img"].float() / 255  # as DetectionTrainer.preprocess_batch
    return b


@pytest.mark.skipif(not COCO128.exists(), reason=f"{COCO128} is absent (set YOLO_TOOD_SHARED)")
@pytest.mark.parametrize("phase", [0, None], ids=["atss", "tal"])
def test_trainer_autocast_on_a_coco128_batch(model, phase):
    """The trainer's own context, ``autocast(amp)`` around ``model(batch)`` (the loss included), on real labels.

    On CPU the trainer forces amp=False, so the context is entered here: ``autocast(True, "cpu")`` is CPU autocast's
    default bf16, ``autocast(torch.float16, "cpu")`` the fp16 of CUDA AMP.
    """
    batch = _coco128_batch()
    model.model[-1].epoch = phase  # 0: inside the warm-up (a third of get_cfg()'s epochs)
    items = {}
    for name, enabled in (("fp32", False), ("bf16", True), ("fp16", torch.float16)):
        model.zero_grad(set_to_none=True)
        with autocast(enabled, "cpu"):
            loss, items[name] = model(batch)  # DetectionModel.loss through TOODLoss
        loss.sum().backward()
        assert torch.isfinite(loss).all(), (name, loss)
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None), name
    model.model[-1].epoch = None
    for name in ("bf16", "fp16"):
        torch.testing.assert_close(items[name], items["fp32"], rtol=0.05, atol=0.01)  # see the fuzz for TAL jumps


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """Two epochs of yolov8n-tood on the generated shapes dataset at 64 px (one ATSS, one TAL epoch)."""
    import yaml
    from ultralytics import YOLO

    from yolo_tood.data import make_shapes_dataset

    root = tmp_path_factory.mktemp("amp_train")
    cfg = yaml.safe_load(CFG.with_name("yolov8-tood.yaml").read_text())
    cfg["atss_epochs"] = 1
    (root / "yolov8n-tood.yaml").write_text(yaml.safe_dump(cfg))
    data = make_shapes_dataset(root / "shapes", train=32, val=8, imgsz=64)
    YOLO(str(root / "yolov8n-tood.yaml")).train(
        data=str(data), epochs=2, imgsz=64, batch=16, workers=0, device="cpu", plots=False, project=str(root), name="t"
    )
    return root / "t" / "weights" / "last.pt"


def test_fp16_and_bf16_inference_match_fp32_on_a_trained_checkpoint(trained):
    """``half=True`` validation / export run the model in fp16 (``.half()``, here on the CPU); CUDA AMP in autocast.

    Tolerances (measured after two epochs at 64 px, scores 0.009-0.011): scores within 0.5% relative in fp16
    (measured 0.17%) and 3% in bf16 (1.1%); boxes, in pixels of the 64 px input, within 0.5 px in fp16 (0.18 px) and
    2 px in bf16 (1.05 px).
    """
    from ultralytics import YOLO

    model = YOLO(str(trained)).model.float().eval()
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)[0]  # (B, 4 + nc, A): xywh pixels, scores
        outs = {"half": model.half()(x.half())[0]}
        assert outs["half"].dtype == torch.float16
        model.float()
        for name, dtype in LOW.items():
            with torch.autocast("cpu", dtype=dtype):
                outs[name] = model(x)[0]
    tol = {"half": (5e-3, 0.5), "fp16": (5e-3, 0.5), "bf16": (3e-2, 2.0)}
    for name, out in outs.items():
        out = out.float()
        score_err = ((out[:, 4:] - ref[:, 4:]).abs() / ref[:, 4:].clamp(min=1e-4)).max()
        box_err = (out[:, :4] - ref[:, :4]).abs().max()
        assert score_err < tol[name][0] and box_err < tol[name][1], (name, float(score_err), float(box_err))
