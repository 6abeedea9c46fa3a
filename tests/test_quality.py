"""What M reads (``quality``): TOOD's features, GFLv2's distribution-guided quality (DGQP) of the final box, or both.

What it must show (issue: a score that knows its box): the statistics are GFLv2's (top-4 probabilities of each side's
DFL distribution and their mean); M reads the distribution of the box that is decoded, after TAP's re-sampling; the
quality's gradient reaches that distribution; both heads take the argument; a reg_max 1 head refuses it in one line;
a head pickled before ``quality`` existed still runs; ``--tap-parts`` can switch the new path off.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from yolo_tood.nn.head import DGQP, QUALITY_MODES, TOODDetect, aligned_score, top4_values
from yolo_tood.nn.tap_head import TAPDetect
from yolo_tood.tools.analysis.tap_parts import M_OFF_LOGIT, switch_off

CH = (16, 32, 64)


def levels(batch: int = 1) -> list[torch.Tensor]:
    return [torch.randn(batch, c, 8 // 2**i, 8 // 2**i) for i, c in enumerate(CH)]


def tap_head(quality: str, **kwargs) -> TAPDetect:
    torch.manual_seed(0)
    head = TAPDetect(nc=3, quality=quality, ch=CH, **kwargs)
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    return head


def off_the_noop_start(*modules: nn.Module) -> None:
    """Perturb every conv weight and bias, as training would, so the paths under test are not at their zero start."""
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.add_(torch.randn_like(p) * 0.1)


@pytest.mark.parametrize("training", [True, False], ids=["train-topk", "eval-network"])
def test_statistics_are_the_top4_probabilities_and_their_mean_per_side(training):
    """Hand-computed: a side whose 16 logits are log(p) has softmax p; its top-4 and their mean, side-major (training:
    ``topk``; inference: the sorting network of ``top4_values``)."""
    probs = torch.zeros(4, 16)
    probs[0, :4] = torch.tensor([0.4, 0.3, 0.2, 0.1])  # sums to 1, so the other bins are 0 (log -> -inf)
    probs[1] = 1 / 16  # flat
    probs[2, 5], probs[2, 6] = 0.5, 0.5  # bimodal
    probs[3, 15] = 1.0  # a spike
    logits = probs.clamp_min(1e-12).log().view(1, 64, 1, 1)
    stats = DGQP(reg_max=16).train(training).statistics(logits).view(4, 5)
    expected = torch.tensor(
        [
            [0.4, 0.3, 0.2, 0.1, 0.25],
            [1 / 16, 1 / 16, 1 / 16, 1 / 16, 1 / 16],
            [0.5, 0.5, 0.0, 0.0, 0.25],
            [1.0, 0.0, 0.0, 0.0, 0.25],
        ]
    )
    torch.testing.assert_close(stats, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n", [4, 8, 16, 32])
def test_top4_values_are_topks_values_ties_included(n):
    """The sorting network gives ``topk(4)``'s values in its order: random values, many ties, half precision."""
    g = torch.Generator().manual_seed(n)
    for x in (
        torch.randn(2, 4, n, 5, 7, generator=g),
        torch.randint(0, 3, (2, 4, n, 5, 7), generator=g).float(),  # ties everywhere
        torch.rand(1, 4, n, 6, 6, generator=g).half(),
    ):
        assert torch.equal(top4_values(x), x.topk(4, dim=2).values)


def test_top4_values_refuses_a_length_it_cannot_sort():
    with pytest.raises(ValueError, match="N / 4 a power of two along axis 2, got N=12"):
        top4_values(torch.zeros(1, 4, 12, 2, 2))


def test_dgqp_is_gflv2s_predictor():
    """20 statistics -> 1x1 conv to 64 -> ReLU -> 1x1 conv to 1 (reg_topk 4, reg_channels 64, add_mean)."""
    dgqp = DGQP(reg_max=16)
    convs = [m for m in dgqp.reg_conf if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(20, 64, (1, 1)), (64, 1, (1, 1))]
    x = torch.randn(2, 64, 3, 5)
    hidden = torch.relu(convs[0](dgqp.statistics(x)))
    torch.testing.assert_close(dgqp(x), convs[1](hidden))


@pytest.mark.parametrize("quality", ["distribution", "both"])
@pytest.mark.parametrize("tap", ["faithful", "none"])
def test_m_reads_the_distribution_of_the_box_that_is_decoded(quality, tap):
    """scores = sqrt(sig(cls) * sig(M)) with M = DGQP(final boxes) (+ the features' logit with ``both``)."""
    head = tap_head(quality, tap=tap).train()
    off_the_noop_start(head.dgqp, *(head.reg_offset or ()), *(head.cls_prob or ()))
    x = levels()
    with torch.no_grad():
        out = head(x)
        n0 = x[0].shape[2] * x[0].shape[3]  # level 0's anchors come first
        boxes = out["boxes"][..., :n0].view(1, 64, *x[0].shape[2:])
        m = head.dgqp(boxes)
        if quality == "both":
            box_feat, cls_feat = head.cv2[0][:-1](x[0]), head.cv3[0][:-1](x[0])
            m = m + head.cls_prob[0](torch.cat((box_feat, cls_feat), 1))
        cls = head.cv3[0](x[0])
        torch.testing.assert_close(out["scores"][..., :n0], aligned_score(cls, m).flatten(2))
        if tap == "faithful":  # the final boxes are the re-sampled ones, not the stock branch's own prediction
            assert not torch.allclose(boxes, head.cv2[0](x[0]))


@pytest.mark.parametrize("quality", ["distribution", "both"])
def test_the_quality_gradient_reaches_the_distribution(quality):
    """As GFLv2: the score's gradient flows through DGQP into the box branch (cv2's last conv)."""
    head = tap_head(quality, tap="none").train()
    off_the_noop_start(head.dgqp)
    head(levels())["scores"].sum().backward()
    assert head.cv2[0][-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("quality", ["distribution", "both"])
def test_dgqp_learns_from_the_first_step(quality):
    """From its no-op start (zero last weights) the DGQP's last conv gets a gradient from TOOD's loss."""
    from test_loss import random_batch
    from test_tap_head import tap_cfg
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel(tap_cfg(quality=quality), nc=3, verbose=False).train()
    head = model.model[-1]
    head.epoch = 0  # TAL at the first epoch: the -tap configs have no warm-up (atss_fraction 0), at any run length
    assert not head.dgqp.reg_conf[-1].weight.any()
    batch = {**random_batch([3, 2], nc=3), "img": torch.rand(2, 3, 64, 64)}
    loss, _ = model.loss(batch, model(batch["img"]))
    loss.sum().backward()
    assert head.dgqp.reg_conf[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("quality", QUALITY_MODES)
def test_the_t_head_takes_quality(quality):
    torch.manual_seed(0)
    head = TOODDetect(nc=3, feat_channels=16, stacked_convs=2, quality=quality, ch=CH)
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    assert (head.dgqp is not None) == (quality != "features") and (head.cls_prob is None) == (quality == "distribution")
    prior = torch.sigmoid((head.cls_prob[-1] if head.cls_prob is not None else head.dgqp.reg_conf[-1]).bias)
    torch.testing.assert_close(prior, torch.tensor([0.01]))  # M's prior, the reference's, on whichever path M starts
    out = head.train()(levels(2))
    assert out["scores"].shape == (2, 3, 84) and out["scores"].isfinite().all()
    assert head.eval()(levels(2))[0].shape == (2, 7, 84)


@pytest.mark.parametrize("cls", [TAPDetect, TOODDetect])
def test_a_reg_max_1_head_refuses_a_distribution_in_one_line(cls):
    with pytest.raises(ValueError, match=r"^\w+Detect: quality 'distribution' reads the DFL box distribution[^\n]*$"):
        cls(nc=3, quality="distribution", reg_max=1, ch=CH)


def test_a_checkpoint_from_before_quality_still_runs():
    """A TAPDetect unpickled from before ``quality`` existed has no ``dgqp`` / ``quality``: it runs as ``features``."""
    head = tap_head("features").eval()
    x = levels()
    with torch.no_grad():
        ref = head(x)[0]
        del head.dgqp, head.quality
        torch.testing.assert_close(head(x)[0], ref)


def test_tap_parts_switches_the_distribution_path_off():
    """``quality`` off: with ``both`` M is the features' logit alone; with ``distribution`` the constant of ``m``."""
    from types import SimpleNamespace

    for quality in ("both", "distribution"):
        head = tap_head(quality).eval()
        off_the_noop_start(head.dgqp, *(head.cls_prob or ()))
        model = SimpleNamespace(model=[head])
        x = levels()
        with torch.no_grad():
            switch_off(model, "quality")
            scores = head(x)[0][:, 4:]
            cls = torch.cat([head.cv3[i](xi).flatten(2) for i, xi in enumerate(x)], -1)
            if quality == "both":
                assert head.dgqp is None
                feats = [torch.cat((head.cv2[i][:-1](xi), head.cv3[i][:-1](xi)), 1) for i, xi in enumerate(x)]
                m = torch.cat([head.cls_prob[i](f).flatten(2) for i, f in enumerate(feats)], -1)
            else:
                m = torch.full_like(cls[:, :1], M_OFF_LOGIT)
            torch.testing.assert_close(scores, (cls.sigmoid() * m.sigmoid()).sqrt())
    with pytest.raises(ValueError, match="reads the features only"):
        switch_off(SimpleNamespace(model=[tap_head("features")]), "quality")


def test_the_export_form_of_the_statistics_is_the_same_function():
    """Under ONNX export the softmax is a max-shifted exp and a sum (onnxruntime's middle-axis Softmax is slow)."""
    from unittest import mock

    dgqp, x = DGQP(reg_max=16), torch.randn(2, 64, 3, 5) * 5
    with mock.patch("torch.onnx.is_in_onnx_export", return_value=True):
        exported = dgqp.statistics(x)
    torch.testing.assert_close(exported, dgqp.statistics(x), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("quality", ["distribution", "both"])
def test_head_maps_read_m_from_the_distribution_too(quality):
    """The tools' head-map pictures: sigmoid(M) with M from the features and the distribution, as the score uses."""
    from test_tap_head import tap_cfg
    from ultralytics.nn.tasks import DetectionModel

    from yolo_tood.tools.analysis.plots import head_maps

    torch.manual_seed(0)
    model = DetectionModel(tap_cfg(quality=quality), nc=3, verbose=False).eval()
    head = model.model[-1]
    off_the_noop_start(head.dgqp)
    img = torch.rand(1, 3, 64, 64)
    maps = head_maps(model, img)
    with torch.no_grad():
        scores = model(img)[0][0, 4:]  # (nc, A) the aligned scores the model predicts
    best = torch.cat([s.flatten() for s in maps["score"]])
    torch.testing.assert_close(best, scores.amax(0), atol=1e-6, rtol=1e-5)


def flat_scores_without_score_convs(head: nn.Module, run) -> list[torch.Tensor]:
    """The training scores of every branch (``run()``: the training forward) once the head is off its no-op start and
    its ``score_convs`` are zeroed (weights and biases)."""
    off_the_noop_start(head)
    with torch.no_grad():
        for conv in head.score_convs():
            conv.weight.zero_()
            conv.bias.zero_()
    out = run()
    return [b["scores"] for b in out.values()] if "one2many" in out else [out["scores"]]


@pytest.mark.parametrize("quality", QUALITY_MODES)
@pytest.mark.parametrize("cls", [TAPDetect, TOODDetect])
def test_score_convs_are_every_path_the_score_reads(cls, quality):
    """With the class logits' and M's last convs at zero, every logit is 0 and every aligned score sqrt(0.5 * 0.5)."""
    kwargs = {"feat_channels": 16, "stacked_convs": 2} if cls is TOODDetect else {}
    torch.manual_seed(0)
    head = cls(nc=3, quality=quality, ch=CH, **kwargs)
    head.stride = torch.tensor([8.0, 16.0, 32.0])
    per_path = 1 if cls is TOODDetect else 3  # the T-Head's convs are shared by the levels; TAP's are per level
    m_paths = per_path * (quality != "distribution") + (quality != "features")  # M from the features, DGQP (shared)
    assert len(head.score_convs()) == per_path + m_paths
    x = levels(2)
    (scores,) = flat_scores_without_score_convs(head, lambda: head.train()(x))
    torch.testing.assert_close(scores, torch.full_like(scores, 0.5))


def test_the_gpu_form_of_the_statistics_is_the_same_function(monkeypatch):
    """At inference a GPU takes DGQP's top-4 with one ``topk`` (``one_kernel_forms``), the CPU with the sorting
    network: the same statistics, over per-level maps and over the flattened levels alike."""
    from yolo_tood.nn import tap

    dgqp = DGQP(reg_max=16).eval()
    for x in (torch.randn(2, 64, 5, 7), torch.randint(0, 3, (2, 64, 40)).float()):  # the second full of ties
        cpu = dgqp.statistics(x)
        monkeypatch.setattr(tap, "ONE_KERNEL_FORMS", True)
        gpu = dgqp.statistics(x)
        monkeypatch.undo()
        assert torch.equal(gpu, cpu)
