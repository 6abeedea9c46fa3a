"""YOLO26 with TOOD: ``yolo26{n,s,m,l,x}-tap.yaml`` and ``-tood.yaml``, NMS and NMS-free.

What it must show (issue: YOLO26 with TOOD): the config ships and resolves by bare name; every stock tensor of a stock
YOLO26 (both branches) keeps its name and shape; right after loading a stock checkpoint the model predicts stock's
boxes on both paths (one-to-many with NMS, one-to-one NMS-free) with scores a monotone map of stock's; ``fuse()`` keeps
the predictor of the branch inference uses; TOOD's loss trains inside ultralytics' ``E2ELoss``, the one-to-one branch
assigned by TOOD's metric with top-1; ``yolo train`` / ``val`` / ``predict`` run with and without NMS; the cost stays
within 1.05x stock's. The T-Head's one-to-one branch is a copy of the whole head on detached features, as
ultralytics builds its own.
"""

from __future__ import annotations

import pytest
import torch
import yaml
from ultralytics import YOLO
from ultralytics.nn.tasks import DetectionModel, yaml_model_load
from ultralytics.utils.loss import E2ELoss

from yolo_tood.nn.head import T_HEAD_MODULES, TOODDetect
from yolo_tood.nn.tap_head import TAP_PRIOR_PROB, TAPDetect
from yolo_tood.paths import CFG_DIR
from yolo_tood.train.assigner import TOODTaskAlignedAssigner, keep_best_per_gt
from yolo_tood.train.loss import TOODLoss

NEW_MODULES = ["cls_prob", "one2one_cls_prob", "one2one_reg_offset", "reg_offset"]


def stock_and_tap(nc: int, scale: str = "n") -> tuple[DetectionModel, DetectionModel]:
    torch.manual_seed(0)
    return (
        DetectionModel(f"yolo26{scale}.yaml", nc=nc, verbose=False),
        DetectionModel(f"yolo26{scale}-tap.yaml", nc=nc, verbose=False),
    )


KINDS = {"tap": TAPDetect, "tood": TOODDetect}


@pytest.mark.parametrize("kind", KINDS)
def test_the_config_is_yolo26_with_a_tood_head(kind):
    ours = yaml.safe_load((CFG_DIR / f"yolo26-{kind}.yaml").read_text())
    stock = yaml_model_load("yolo26.yaml")
    assert ours["backbone"] == stock["backbone"] and ours["head"][:-1] == stock["head"][:-1]
    assert ours["head"][-1][2] == KINDS[kind].__name__ and stock["head"][-1][2] == "Detect"
    assert (ours["end2end"], ours["reg_max"]) == (stock["end2end"], stock["reg_max"]) == (True, 1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", list("nsmlx"))
def test_bare_names_resolve_from_any_directory(kind, scale, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    head = YOLO(f"yolo26{scale}-{kind}.yaml").model.model[-1]
    assert isinstance(head, KINDS[kind]) and head.one2one_cv2 is not None and head.reg_max == 1


def test_every_stock_tensor_keeps_its_name_and_shape_on_both_branches():
    stock, tap = stock_and_tap(nc=80)
    stock_sd, tap_sd = stock.state_dict(), tap.state_dict()
    assert {k: v.shape for k, v in stock_sd.items()} == {k: tap_sd[k].shape for k in stock_sd}
    assert any(".one2one_cv2." in k for k in stock_sd) and any(".one2one_cv3." in k for k in stock_sd)
    assert sorted({k.split(".")[2] for k in set(tap_sd) - set(stock_sd)}) == NEW_MODULES
    head = tap.model[-1]
    assert not head.legacy and isinstance(head.dfl, torch.nn.Identity)  # YOLO26's cls branch, raw distances


@pytest.mark.parametrize("source_nc,nc", [(80, 80), (80, 7)])
def test_a_stock_checkpoint_transfers_what_it_transfers_into_stock(source_nc, nc):
    source, _ = stock_and_tap(nc=source_nc)
    counts = {}
    for cfg in ("yolo26n.yaml", "yolo26n-tap.yaml"):
        torch.manual_seed(1)
        model = DetectionModel(cfg, nc=nc, verbose=False)
        model.load(source, verbose=False)
        counts[cfg] = {k for k, v in source.state_dict().items() if torch.equal(model.state_dict().get(k), v)}
    assert counts["yolo26n-tap.yaml"] == counts["yolo26n.yaml"] and len(counts["yolo26n.yaml"]) > 500
    head = model.model[-1]  # the predictors follow cv3's width when load rebuilt it at the source's
    for prefix in ("", "one2one_"):
        assert (
            getattr(head, f"{prefix}cls_prob")[0][0].in_channels
            == head.cv2[0][-1].in_channels + head.cv3[0][-1].in_channels
        )


def _stock_loaded_pair(nc: int = 5) -> tuple[DetectionModel, DetectionModel]:
    """A stock YOLO26n with spread scores (cls biases at 0) and the TAP model loaded from it."""
    stock, tap = stock_and_tap(nc=nc)
    with torch.no_grad():
        for branch in (*stock.model[-1].cv3, *stock.model[-1].one2one_cv3):
            branch[-1].bias.zero_()
    tap.load(stock, verbose=False)
    return stock.eval(), tap.eval()


@pytest.mark.parametrize("end2end", [False, True], ids=["nms", "nms_free"])
def test_it_starts_as_the_stock_model_on_both_paths(end2end):
    """NMS path: same boxes, scores sqrt(TAP_PRIOR_PROB * p); NMS-free: the same top-max_det rows, same order."""
    stock, tap = _stock_loaded_pair()
    stock.end2end = tap.end2end = end2end
    x = torch.rand(2, 3, 160, 192)  # 630 anchors, more than max_det
    with torch.no_grad():
        ref, out = stock(x)[0], tap(x)[0]
    if not end2end:  # (B, 4 + nc, A)
        torch.testing.assert_close(out[:, :4], ref[:, :4], atol=1e-3, rtol=0)
        torch.testing.assert_close(out[:, 4:], (TAP_PRIOR_PROB * ref[:, 4:]).sqrt(), atol=1e-6, rtol=1e-5)
    else:  # (B, max_det, 6): x1, y1, x2, y2, score, class
        assert out.shape == ref.shape == (2, 300, 6)
        torch.testing.assert_close(out[..., :4], ref[..., :4], atol=1e-3, rtol=0)
        torch.testing.assert_close(out[..., 4], (TAP_PRIOR_PROB * ref[..., 4]).sqrt(), atol=1e-6, rtol=1e-5)
        assert torch.equal(out[..., 5], ref[..., 5])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("end2end", [False, True], ids=["nms", "nms_free"])
def test_fuse_keeps_the_branch_inference_uses(kind, end2end):
    model = _stock_loaded_pair()[1] if kind == "tap" else DetectionModel("yolo26n-tood.yaml", nc=5, verbose=False)
    model.eval().end2end = end2end
    x = torch.rand(1, 3, 64, 64)
    branch = "one2one" if end2end else "one2many"
    with torch.no_grad():
        before, before_preds = model(x)
        model.fuse(verbose=False)
        after, after_preds = model(x)
    head = model.model[-1]
    kept, dropped = ("one2one_", "") if end2end else ("", "one2one_")
    names = ("cv2", "cv3", "merged_predictors") if kind == "tap" else ("cv2", *T_HEAD_MODULES[:-3], "reg_offset")
    for name in names:
        assert getattr(head, kept + name) is not None and getattr(head, dropped + name, None) is None, name
    if kind == "tap":  # M's and O's predictors now run as one (MergedPredictors)
        assert all(getattr(head, p + n) is None for p in ("", "one2one_") for n in ("cls_prob", "reg_offset"))
    assert head.end2end == end2end
    for key in ("boxes", "offsets", "scores"):  # the fused head's merged predictors give the same maps
        torch.testing.assert_close(
            after_preds.get(branch, after_preds)[key], before_preds[branch][key], atol=1e-4, rtol=1e-4
        )
    if end2end:  # top max_det of near-equal scores at init: the order of ties may differ, the scores may not
        torch.testing.assert_close(after[..., 4].sort().values, before[..., 4].sort().values, atol=1e-6, rtol=1e-5)
    else:
        torch.testing.assert_close(after, before, atol=1e-3, rtol=1e-4)


def test_the_t_heads_one_to_one_branch_is_a_copy_on_detached_features():
    """Same weights at the start; the one-to-one loss reaches its own branch only (not the backbone, not one2many)."""
    from ultralytics.cfg import get_cfg

    torch.manual_seed(0)
    model = DetectionModel("yolo26n-tood.yaml", nc=3, verbose=False)
    head = model.model[-1]
    for name in T_HEAD_MODULES:
        o2m, o2o = getattr(head, name), getattr(head, f"one2one_{name}")
        assert (o2m is None) == (o2o is None) and (o2m is None or o2m is not o2o), name
        if o2m is not None:
            for a, b in zip(o2m.state_dict().values(), o2o.state_dict().values()):
                assert torch.equal(a, b), name
    model.args = get_cfg(overrides={"epochs": 3})
    criterion = model.init_criterion()
    batch = {
        "img": torch.rand(2, 3, 64, 64),
        "batch_idx": torch.tensor([0.0, 1]),
        "cls": torch.tensor([[0.0], [2]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.4, 0.6, 0.5, 0.3]]),
    }
    preds = model.train()(batch["img"])
    criterion.one2one.loss(preds["one2one"], batch)[0].sum().backward()
    grads = {n: p.grad is not None and bool(p.grad.abs().sum() > 0) for n, p in model.named_parameters()}
    head_prefix = f"model.{len(model.model) - 1}."
    assert all(g for n, g in grads.items() if n.startswith(head_prefix + "one2one_tood_"))
    assert not any(g for n, g in grads.items() if not n.startswith(head_prefix + "one2one_"))


def test_keep_best_per_gt_by_hand():
    metrics = torch.tensor([[0.2, 0.9, 0.4], [0.5, 0.5, -1.0], [0.1, -1.0, -1.0]])  # (GT, candidate); -1: no positive
    positive = metrics >= 0
    assert keep_best_per_gt(metrics, 1).tolist() == [[False, True, False], [True, False, False], [True, False, False]]
    assert (keep_best_per_gt(metrics, 2) & positive).tolist() == [  # tie: the earlier candidate first
        [False, True, True],
        [True, True, False],
        [True, False, False],
    ]


def test_the_one_to_one_assignment_is_each_gts_best_positive():
    """topk2=1 keeps, per GT, the positive of largest metric among those of the same assigner without it."""
    torch.manual_seed(0)
    anc = torch.stack(torch.meshgrid(torch.arange(4, 64, 8.0), torch.arange(4, 64, 8.0), indexing="xy"), -1).view(-1, 2)
    scores = torch.rand(2, len(anc), 3)
    boxes = torch.cat((anc - torch.rand(len(anc), 2) * 12 - 2, anc + torch.rand(len(anc), 2) * 12 + 2), -1)
    gt_boxes = torch.tensor([[[4.0, 4, 30, 28], [20, 30, 60, 60]], [[10, 10, 40, 50], [0, 0, 0, 0]]])
    gt_labels, mask = torch.tensor([[[0.0], [2]], [[1], [0]]]), torch.tensor([[[1.0], [1]], [[1], [0]]])
    args = (scores, boxes[None].expand(2, -1, -1), anc, gt_labels, gt_boxes, mask)
    many, one = (
        TOODTaskAlignedAssigner.from_hyp(topk=7)(*args),
        TOODTaskAlignedAssigner.from_hyp(topk=7, topk2=1)(*args),
    )
    for b, n in ((0, 2), (1, 1)):
        for g in range(n):
            pos_many = (many.gt_idx[b] == g) & many.fg_mask[b]
            pos_one = (one.gt_idx[b] == g) & one.fg_mask[b]
            assert pos_one.sum() == 1 and pos_many.sum() > 1
            metric = scores[b, :, int(gt_labels[b, g])] * many.ious[b] ** 6  # TOOD's t (alpha 1, beta 6)
            assert int(pos_one.nonzero()) == int(torch.where(pos_many, metric, -1.0).argmax())
            # t_hat of a single positive is its IoU (t / max(t) * max(u))
            torch.testing.assert_close(one.metrics[b][pos_one], one.ious[b][pos_one])


@pytest.mark.parametrize("kind", KINDS)
def test_toods_loss_runs_inside_e2eloss(kind):
    from ultralytics.cfg import get_cfg

    torch.manual_seed(0)
    tap = DetectionModel(f"yolo26n-{kind}.yaml", nc=7, verbose=False)
    tap.args = get_cfg(overrides={"epochs": 5, "atss_epochs": 2})
    criterion = tap.init_criterion()
    assert isinstance(criterion, E2ELoss)
    o2m, o2o = criterion.one2many, criterion.one2one
    assert isinstance(o2m, TOODLoss) and isinstance(o2o, TOODLoss)
    assert (o2m.tal_assigner.topk, o2m.tal_assigner.topk2) == (13, None)  # TOOD's m, not E2ELoss's 10
    assert (o2o.tal_assigner.topk, o2o.tal_assigner.topk2) == (7, 1)
    tap.model[-1].epoch = 0  # inside the 2-epoch warm-up: the one-to-many branch only
    assert o2m.in_warmup() and not o2o.in_warmup()
    tap.train()
    batch = {
        "img": torch.rand(2, 3, 64, 64),
        "batch_idx": torch.tensor([0.0, 0, 1]),
        "cls": torch.tensor([[0.0], [3], [5]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.4, 0.4], [0.3, 0.3, 0.2, 0.3], [0.6, 0.6, 0.5, 0.5]]),
    }
    preds = tap(batch["img"])
    loss, items = criterion(preds, batch)
    assert sorted(items) == ["box_loss", "cls_loss", "l1_loss"] and torch.isfinite(loss).all()
    o2m_loss = o2m.loss(preds["one2many"], batch)[0]
    o2o_loss, o2o_items = o2o.loss(preds["one2one"], batch)
    torch.testing.assert_close(loss, 0.8 * o2m_loss + 0.2 * o2o_loss)  # E2ELoss's start weights; items: one-to-one
    torch.testing.assert_close(torch.stack(list(items.values())), torch.stack(list(o2o_items.values())))
    loss.sum().backward()
    head = tap.model[-1]
    for name in ("cls_prob", "one2one_cls_prob", "reg_offset", "one2one_reg_offset"):
        module = getattr(head, name)  # TAP: one predictor per level (P3's here); T-Head: one shared
        last = module[-1] if kind == "tood" else module[0][-1]
        assert last.weight.grad.abs().sum() > 0, name  # both branches learn from step 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", list("nsmlx"))
def test_budget_fused_params_and_gflops_within_five_percent_of_stock(kind, scale):
    from ultralytics.utils.torch_utils import get_flops, get_num_params

    for end2end in (False, True):
        s = DetectionModel(f"yolo26{scale}.yaml", verbose=False).eval()
        t = DetectionModel(f"yolo26{scale}-{kind}.yaml", verbose=False).eval()
        s.end2end = t.end2end = end2end
        s.fuse(verbose=False), t.fuse(verbose=False)
        assert get_num_params(t) <= 1.05 * get_num_params(s), end2end
        assert get_flops(t, 640) <= 1.05 * get_flops(s, 640), end2end


@pytest.mark.parametrize("kind", KINDS)
def test_train_val_predict_with_and_without_nms(kind, tmp_path):
    """``yolo train`` on a YOLO26 TOOD model, then val and predict on both paths (default NMS, ``nms=False``)."""
    from test_diagnostics import make_dataset

    data = make_dataset(tmp_path / "data", n_train=4, n_val=2)
    torch.manual_seed(0)
    model = YOLO(f"yolo26n-{kind}.yaml")
    model.train(
        data=str(data), epochs=2, imgsz=64, batch=2, workers=0, device="cpu", project=str(tmp_path), name="t",
        plots=False,
    )  # fmt: skip
    best = tmp_path / "t" / "weights" / "best.pt"
    for nms in (None, False):
        metrics = YOLO(best).val(data=str(data), imgsz=64, batch=2, workers=0, device="cpu", plots=False, nms=nms)
        assert 0.0 <= metrics.box.map <= 1.0
    images = sorted((data.parent / "images" / "val").glob("*"))
    nms_free = YOLO(best).predict(images[0], imgsz=64, nms=False, conf=0.0, verbose=False)[0]
    with_nms = YOLO(best).predict(images[0], imgsz=64, conf=0.0, iou=0.01, verbose=False)[0]
    anchors = 8 * 8 + 4 * 4 + 2 * 2  # at 64 px, fewer than max_det (300)
    assert len(nms_free.boxes) == anchors  # NMS-free: the top min(max_det, anchors), no IoU step
    assert 0 < len(with_nms.boxes) < anchors  # the default path runs NMS (iou 0.01: overlapping boxes go)


def _soften_scores(head: torch.nn.Module) -> None:
    """Scale the last cls and M convs of both branches by 0.1: spread_scores saturates YOLO26's scores at 1.0, and
    the top-300 set of an NMS-free output is then decided by ties."""
    with torch.no_grad():
        for conv in head.score_convs():
            conv.weight.mul_(0.1)


def _assert_same_rows(ref: torch.Tensor, out: torch.Tensor, what: str, box_rtol: float) -> None:
    """Two (N, 6) NMS-free outputs hold the same detections in any order: each row of one has a row of the other
    with the same class, a score within 1e-4 and a box within 1e-2 px or ``box_rtol`` of its largest coordinate."""
    assert ref.shape == out.shape, what
    box_tol = torch.clamp(box_rtol * ref[:, :4].abs().amax(1), min=1e-2)  # (N,)
    close = (ref[:, None, 5] == out[None, :, 5]) & ((ref[:, None, 4] - out[None, :, 4]).abs() <= 1e-4)
    close &= (ref[:, None, :4] - out[None, :, :4]).abs().amax(-1) <= box_tol[:, None]  # (N, N)
    assert close.any(1).all() and close.any(0).all(), f"{what}: {int((~close.any(1)).sum())} rows unmatched"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("nms", [None, False], ids=["nms", "nms_free"])
def test_onnx_parity_on_both_paths(kind, nms, tmp_path):
    """ONNX export of each path (``nms=False``: the NMS-free branch, (1, 300, 6)) matches the fused PyTorch model."""
    ort = pytest.importorskip("onnxruntime")
    from test_export import TAP_BOX_RTOL, assert_parity, calibrate_batchnorms, load_image
    from test_export_matrix import SOURCE, spread_scores

    torch.manual_seed(0)
    yolo = YOLO(f"yolo26n-{kind}.yaml")
    spread_scores(yolo.model.model[-1], seed=1)
    calibrate_batchnorms(yolo.model, [SOURCE], imgsz=320)
    _soften_scores(yolo.model.model[-1])
    ckpt = tmp_path / f"{kind}.pt"
    yolo.save(ckpt)
    f = YOLO(ckpt).export(format="onnx", imgsz=160, nms=nms)
    session = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    x = load_image(SOURCE, 160)
    out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    ref_model = YOLO(ckpt).model.float().eval()
    ref_model.end2end = nms is False
    with torch.no_grad():
        ref = ref_model.fuse(verbose=False)(x)
    ref = ref[0] if isinstance(ref, (list, tuple)) else ref
    assert out.shape == ref.shape == ((1, 300, 6) if nms is False else (1, 4 + 80, 525))
    if nms is False:  # the same rows; their order may differ where scores tie
        _assert_same_rows(ref[0], out[0], f"yolo26n-{kind} nms=False", TAP_BOX_RTOL)
    else:
        assert_parity(ref.numpy(), out.numpy(), f"yolo26n-{kind} nms={nms}", TAP_BOX_RTOL)


def test_compare_reports_both_maps_of_an_end_to_end_family(tmp_path):
    """``yolo-tood compare --family yolo26``: every run validated with NMS (``val``) and NMS-free (``val_nms_free``)."""
    import json

    from test_diagnostics import make_dataset

    from yolo_tood.tools.cli import run_command

    data = make_dataset(tmp_path / "data", n_train=2, n_val=2)
    out = tmp_path / "cmp"
    args = ["--data", str(data), "--family", "yolo26", "--models", "stock", "tap", "--seeds", "0", "--epochs", "1"]
    run_command("compare", [*args, "--imgsz", "64", "--batch", "2", "--workers", "0", "--out", str(out)])
    report = json.loads((out / "compare.json").read_text())
    assert report["splits"] == ["val", "val_nms_free"]
    for label in ("stock", "tap"):
        val = report["runs"][label]["0"]["val"]
        assert set(val) == {"val", "val_nms_free"} and all(0 <= v["map"] <= 1 for v in val.values())
    assert (out / "val" / "tap_s0_nms_free").is_dir()  # the NMS-free validation run, beside the NMS one
    assert "val_nms_free mAP50-95" in (out / "compare.md").read_text()


@pytest.mark.parametrize("kind", KINDS)
def test_score_convs_cover_both_branches(kind):
    """``score_convs`` lists the score paths of both branches: zeroed, both branches' scores are flat at 0.5."""
    from test_quality import flat_scores_without_score_convs

    torch.manual_seed(0)
    model = DetectionModel(f"yolo26n-{kind}.yaml", nc=3, verbose=False)
    head, img = model.model[-1], torch.rand(1, 3, 64, 64)
    branches = flat_scores_without_score_convs(head, lambda: model.train()(img))
    assert len(branches) == 2
    for scores in branches:
        torch.testing.assert_close(scores, torch.full_like(scores, 0.5))


@pytest.mark.parametrize("kind", KINDS)
def test_nms_free_path_keeps_max_det_not_nms_pre(kind):
    """``nms_pre`` bounds NMS's candidates; the NMS-free path has no NMS and keeps stock's top ``max_det``."""
    model = DetectionModel(f"yolo26n-{kind}.yaml", nc=5, verbose=False).eval()
    head = model.model[-1]
    x = torch.rand(1, 3, 64, 64)  # 84 anchors, under max_det
    with torch.no_grad():
        head.nms_pre = 0
        every = model(x)[0][:, 4:]  # NMS path, (1, nc, A), no bound
        head.nms_pre = 7
        with_nms = model(x)[0][:, 4:]
        model.end2end = True
        nms_free = model(x)[0]  # (1, max_det, 6)
    kth = every.flatten().topk(7).values[-1]
    assert torch.equal(with_nms > 0, every >= kth)  # the 7 best (and ties with the 7th) on the NMS path
    assert nms_free.shape == (1, 84, 6) and bool((nms_free[..., 4] > 0).all())  # every anchor's best, none zeroed
