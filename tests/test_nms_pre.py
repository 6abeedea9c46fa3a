"""The pre-NMS candidate bound of TOOD models (``keep_topk_scores``) and the NMS time-limit guard."""

from __future__ import annotations

import logging
from unittest import mock

import pytest
import torch
from ultralytics.utils.nms import non_max_suppression

from yolo_tood.nn.head import TOODDetect, keep_topk_scores
from yolo_tood.tools.analysis.nms_guard import NMSTimeLimitError, NMSTimeLimitGuard


def test_keep_topk_scores_hand_case():
    """The k largest (anchor, class) scores of each image survive, the rest become 0; shape is kept."""
    s = torch.tensor(
        [
            [[0.9, 0.1, 0.5], [0.2, 0.7, 0.3]],  # image 0: top-2 are 0.9 and 0.7
            [[0.0, 0.4, 0.0], [0.6, 0.0, 0.1]],  # image 1: top-2 are 0.6 and 0.4
        ]
    )
    out = keep_topk_scores(s, 2)
    expected = torch.tensor(
        [
            [[0.9, 0.0, 0.0], [0.0, 0.7, 0.0]],
            [[0.0, 0.4, 0.0], [0.6, 0.0, 0.0]],
        ]
    )
    torch.testing.assert_close(out, expected)


def test_keep_topk_scores_more_than_available_keeps_all():
    """With fewer scores than k (a small input), nothing is cut: the zero padding makes the k-th value 0."""
    s = torch.rand(2, 3, 5)
    torch.testing.assert_close(keep_topk_scores(s, 1000), s)


def test_keep_topk_scores_keeps_ties_at_the_threshold():
    s = torch.tensor([[[0.5, 0.5, 0.5, 0.1]]])
    assert int((keep_topk_scores(s, 2) > 0).sum()) == 3  # all three 0.5 are kept, never an arbitrary two


def test_keep_topk_scores_does_not_change_the_top_k_nms_result():
    """NMS of the bounded scores equals NMS of the original scores restricted to the same top-k candidates."""
    g = torch.Generator().manual_seed(0)
    b, nc, a, k = 2, 4, 500, 300
    xy = torch.rand(b, 2, a, generator=g) * 300
    wh = torch.rand(b, 2, a, generator=g) * 60 + 4
    scores = torch.rand(b, nc, a, generator=g) ** 4
    pred = torch.cat((xy, wh, keep_topk_scores(scores, k)), 1)
    out = non_max_suppression(pred, conf_thres=0.001, iou_thres=0.7, multi_label=True, max_det=300)
    for i in range(b):
        flat = scores[i].flatten()
        keep = torch.zeros_like(flat).scatter_(0, flat.topk(k).indices, 1).view(nc, a)
        ref_pred = torch.cat((xy[i : i + 1], wh[i : i + 1], (scores[i] * keep)[None]), 1)
        ref = non_max_suppression(ref_pred, conf_thres=0.001, iou_thres=0.7, multi_label=True, max_det=300)[0]
        torch.testing.assert_close(out[i], ref)
        assert len(out[i]) <= k


def make_head(nc: int = 5) -> TOODDetect:
    head = TOODDetect(nc, 16, 2, ch=(8, 16, 32))
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    with torch.no_grad():  # scores far from the 0.01 prior so that they differ from each other
        head.tood_cls.bias.zero_()
        head.tood_cls.weight.normal_(0, 0.5)
    return head.eval()


def test_head_inference_keeps_nms_pre_candidates_per_image():
    head = make_head()
    x = [torch.randn(2, c, 128 // s, 128 // s) for c, s in zip((8, 16, 32), (8, 16, 32))]  # 336 anchors x 5 classes
    head.nms_pre = 0
    y_all, _ = head(x)
    head.nms_pre = 100
    y, _ = head(x)
    assert y.shape == y_all.shape
    torch.testing.assert_close(y[:, :4], y_all[:, :4])  # boxes untouched
    kept = (y[:, 4:] > 0).sum((1, 2))
    assert kept.tolist() == [100, 100]
    for i in range(2):  # the kept scores are exactly the 100 largest of the unbounded output
        top = y_all[i, 4:].flatten().topk(100).values
        torch.testing.assert_close(y[i, 4:].flatten().topk(100).values, top)


def test_head_inference_keeps_nms_pre_candidates_per_level():
    """nms_pre_mode="level": nms_pre candidates per level and image (MMDetection's nms_pre), 3 levels here."""
    head = make_head()
    x = [torch.randn(2, c, 128 // s, 128 // s) for c, s in zip((8, 16, 32), (8, 16, 32))]  # 256 + 64 + 16 anchors
    head.nms_pre = 0
    y_all, _ = head(x)
    head.nms_pre, head.nms_pre_mode = 40, "level"
    try:
        y, _ = head(x)
    finally:
        head.nms_pre_mode = "image"
    torch.testing.assert_close(y[:, :4], y_all[:, :4])
    for lo, hi in ((0, 256), (256, 320), (320, 336)):  # each level keeps exactly its own 40 largest pairs
        kept, ref = y[:, 4:, lo:hi], y_all[:, 4:, lo:hi]
        assert (kept > 0).sum((1, 2)).tolist() == [40, 40]
        for i in range(2):
            torch.testing.assert_close(kept[i].flatten().topk(40).values, ref[i].flatten().topk(40).values)


def test_bad_nms_pre_mode_is_one_line():
    head = make_head()
    head.nms_pre_mode = "anchor"
    with pytest.raises(ValueError, match="nms_pre_mode must be one of image, level, got 'anchor'"):
        head([torch.randn(1, c, 128 // s, 128 // s) for c, s in zip((8, 16, 32), (8, 16, 32))])


def test_nms_guard_counts_and_raises():
    log = logging.getLogger("ultralytics")
    with NMSTimeLimitGuard() as guard:
        log.warning("something else")
        log.warning("NMS time limit 2.800s exceeded")
    assert guard.hits == 1
    assert guard not in log.handlers  # detached
    with pytest.raises(NMSTimeLimitError, match="NMS time limit was exceeded 1 time"):
        with NMSTimeLimitGuard(raise_on_exit=True):
            log.warning("NMS time limit 2.800s exceeded")
    with NMSTimeLimitGuard(raise_on_exit=True) as quiet:
        log.warning("all fine")
    assert quiet.hits == 0


def test_batch1_retry_only_when_the_limit_fired():
    from yolo_tood.tools.analysis.nms_guard import run_with_batch1_retry

    log, calls = logging.getLogger("ultralytics"), []

    def run(batch, limit_at=(16,)):
        calls.append(batch)
        if batch in limit_at:
            log.warning("NMS time limit 2.800s exceeded")
        return f"figures at batch {batch}"

    assert run_with_batch1_retry(run, 16, "val") == ("figures at batch 1", 1) and calls == [16, 1]
    calls.clear()
    assert run_with_batch1_retry(run, 8, "val") == ("figures at batch 8", 0) and calls == [8]
    with pytest.raises(NMSTimeLimitError, match="during the batch-1 val"):
        run_with_batch1_retry(lambda b: run(b, limit_at=(16, 1)), 16, "val")


def test_nms_guard_sees_ultralytics_own_warning(monkeypatch):
    """The guard catches the warning as ultralytics' NMS emits it (time limit forced to be exceeded)."""
    import ultralytics.utils.nms as nms

    clock = iter(range(0, 1000, 100))
    monkeypatch.setattr(nms.time, "time", lambda: float(next(clock)))  # every call is 100 s later
    pred = torch.cat((torch.rand(2, 2, 50) * 100, torch.rand(2, 2, 50) * 20 + 1, torch.rand(2, 3, 50)), 1)
    with NMSTimeLimitGuard() as guard:
        nms.non_max_suppression(pred, conf_thres=0.001)
    assert guard.hits == 1


def test_dynamic_onnx_traced_small_keeps_the_bound_at_larger_sizes(tmp_path, monkeypatch):
    """A dynamic export traced at 32 px (21 anchors x 80 classes < nms_pre) still keeps nms_pre scores at 192 px."""
    ort = pytest.importorskip("onnxruntime")
    from pathlib import Path

    from ultralytics import YOLO

    monkeypatch.chdir(tmp_path)
    cfg = Path(__file__).resolve().parents[1] / "cfg" / "yolov8n-tood.yaml"
    model = YOLO(str(cfg))
    head = model.model.model[-1]
    with torch.no_grad():  # spread the scores so the top-k is unambiguous
        head.tood_cls.bias.zero_()
        head.tood_cls.weight.normal_(0, 0.5)
    head.nms_pre = 2000  # more than the 1,680 scores at 32 px, fewer than the 60,480 at 192 px
    f = model.export(format="onnx", imgsz=32, dynamic=True, simplify=False, verbose=False)
    x = torch.rand(1, 3, 192, 192)
    session = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    y = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    kept = int((y[0, 4:] > 0).sum())
    assert kept == head.nms_pre  # 80 classes x 756 anchors available
    model.model.eval()
    with torch.no_grad():
        y_pt = model.model(x)[0]
    assert int((y_pt[0, 4:] > 0).sum()) == kept


@pytest.mark.parametrize("shape", [(2, 80, 840), (2, 3, 210), (1, 80, 21), (3, 7, 50), (2, 1, 50)])
@pytest.mark.parametrize("k", [1, 5, 300, 1000])
def test_keep_topk_scores_equals_the_flat_top_k(shape, k):
    """The two-stage search (k best anchors, then their pairs) keeps exactly the k largest of all nc * A pairs."""
    g = torch.Generator().manual_seed(k)
    s = torch.rand(*shape, generator=g) ** 3
    s[0, 0, :3] = s[0, -1, 5]  # some exact ties across classes and anchors
    flat = s.reshape(shape[0], -1)
    kth = flat.sort(1, descending=True).values[:, min(k, flat.shape[1]) - 1 : min(k, flat.shape[1])]  # (B, 1)
    kth = torch.where(torch.tensor(k > flat.shape[1]), torch.zeros_like(kth), kth)  # fewer pairs than k: keep all
    expected = torch.where(flat >= kth, flat, torch.zeros_like(flat)).view_as(s)
    torch.testing.assert_close(keep_topk_scores(s, k), expected, rtol=0, atol=0)


@pytest.mark.parametrize("k", [1, 7, 50, 400])
def test_the_gpu_form_of_the_bound_keeps_the_same_scores(monkeypatch, k):
    """One TopK over all pairs (the form a GPU runs, ``one_kernel_forms``), the two small TopKs of the CPU and the
    padded form of an export keep the same scores, ties included."""
    from yolo_tood.nn import tap

    g = torch.Generator().manual_seed(k)
    for scores in (torch.rand(2, 5, 300, generator=g), torch.randint(0, 4, (2, 5, 300), generator=g).float() / 4):
        cpu = keep_topk_scores(scores, k)
        monkeypatch.setattr(tap, "ONE_KERNEL_FORMS", True)
        gpu = keep_topk_scores(scores, k)
        monkeypatch.setattr(tap, "ONE_KERNEL_FORMS", False)
        with mock.patch("torch.onnx.is_in_onnx_export", return_value=True):
            padded = keep_topk_scores(scores, k)
        assert torch.equal(gpu, cpu) and torch.equal(padded.float(), cpu)
