"""Assignment statistics (yolo_tood.tal_stats): hand-made assignments, the loss hook, the callbacks and the plot."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_loss import FakeHead, FakeModel, random_batch, random_preds

from yolo_tood.integration.callbacks import on_train_end, on_train_epoch_end
from yolo_tood.tools.cli import run_command
from yolo_tood.train.assigner import AssignResult
from yolo_tood.train.tal_stats import SIZE_LABELS, TALStats, gt_sizes, plot_tal_stats


def assign(gt_idx: list[list[int]]) -> AssignResult:
    """An AssignResult whose only meaningful field is gt_idx (B, A)."""
    g = torch.tensor(gt_idx)
    z = torch.zeros(g.shape)
    return AssignResult(g >= 0, g, g.clamp(min=0), torch.zeros(*g.shape, 4), z, z)


def boxes_of_size(sizes: list[list[float]]) -> torch.Tensor:
    """(B, n, 4) square xyxy boxes of side ``size`` at the origin (sqrt(w*h) = size)."""
    s = torch.tensor(sizes)
    return torch.stack((torch.zeros_like(s), torch.zeros_like(s), s, s), -1)


def test_gt_sizes_and_bucket_edges():
    assert gt_sizes(torch.tensor([[0.0, 0.0, 4.0, 16.0], [5.0, 5.0, 3.0, 9.0]])).tolist() == [8.0, 0.0]
    stats = TALStats()
    # sizes on the edges fall in the upper bucket: 7.9 -> <8, 8 -> 8-16, 16 -> 16-32, 32 -> 32-96, 96 -> >=96
    gt = boxes_of_size([[7.9, 8.0, 16.0, 32.0, 96.0]])
    stats.update(assign([[0, 1, 1, 2, 2, 2, 4, -1]]), gt, torch.ones(1, 5, 1), "TAL")
    s = stats.summary()
    assert [s["by_size"][k]["gts"] for k in SIZE_LABELS] == [1, 1, 1, 1, 1]
    assert [s["by_size"][k]["pos_per_gt"] for k in SIZE_LABELS] == [1.0, 2.0, 3.0, 0.0, 1.0]
    assert [s["by_size"][k]["zero_pos_share"] for k in SIZE_LABELS] == [0.0, 0.0, 0.0, 1.0, 0.0]
    assert (s["gts"], s["pos_per_gt"], s["zero_pos_share"], s["phase"]) == (5, 7 / 5, 1 / 5, "TAL")


def test_padding_is_ignored_and_images_are_kept_apart():
    stats = TALStats()
    # image 0: 2 real GTs (sizes 10, 50) + 1 padded slot; image 1: 1 real GT (size 10), gt_idx 0 means ITS GT 0
    gt = boxes_of_size([[10.0, 50.0, 10.0], [10.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])[..., None]
    stats.update(assign([[0, 0, 0, -1], [0, -1, -1, -1]]), gt, mask, "ATSS")
    stats.update(assign([[1, -1, -1, -1], [-1, -1, -1, -1]]), gt, mask, "TAL")  # a second batch accumulates
    s = stats.summary()
    assert s["gts"] == 6 and s["pos_per_gt"] == pytest.approx(5 / 6)
    assert s["by_size"]["8-16"] == {"gts": 4, "pos_per_gt": 1.0, "zero_pos_share": 0.5}
    assert s["by_size"]["32-96"] == {"gts": 2, "pos_per_gt": 0.5, "zero_pos_share": 0.5}
    assert s["by_size"]["<8"] == {"gts": 0, "pos_per_gt": None, "zero_pos_share": None}
    assert s["phase"] == "ATSS/TAL"
    stats.reset()
    assert stats.summary()["gts"] == 0 and stats.summary()["phase"] is None


def test_loss_counts_only_in_training_mode_and_matches_the_assignment(monkeypatch):
    from yolo_tood.train.loss import TOODLoss

    head = FakeHead(nc=3)
    criterion = TOODLoss(FakeModel(head))
    results = []
    original = criterion.tal_assigner.forward
    monkeypatch.setattr(criterion.tal_assigner, "forward", lambda *a: results.append(original(*a)) or results[-1])
    batch = random_batch([3, 0, 5], nc=3)
    _, _, preds = random_preds(3, 3, 16, 64)
    head.eval()  # a validation loss call: not counted
    criterion(preds(), batch)
    assert criterion.tal_stats.summary()["gts"] == 0
    head.train()
    criterion(preds(), batch)
    s = criterion.tal_stats.summary()
    assert s["gts"] == 8 and s["phase"] == "TAL"
    assert s["pos_per_gt"] * 8 == pytest.approx(float(results[-1].fg_mask.sum()))


def fake_trainer(tmp_path: Path, criterion, epoch: int, plots: bool = True) -> SimpleNamespace:
    model = SimpleNamespace(criterion=criterion)
    plotted = []  # BaseTrainer.on_plot
    return SimpleNamespace(model=model, epoch=epoch, save_dir=tmp_path, args=SimpleNamespace(plots=plots),
                           plotted=plotted, on_plot=plotted.append)  # fmt: skip


def test_callbacks_write_one_line_per_epoch_and_draw_it_at_the_end(tmp_path):
    from yolo_tood.train.loss import TOODLoss

    criterion = TOODLoss(FakeModel(FakeHead()))
    gt = boxes_of_size([[4.0, 40.0]])
    for epoch, phase in ((0, "ATSS"), (1, "TAL"), (2, "TAL")):
        criterion.tal_stats.update(assign([[0, 0, 1, -1]] if epoch else [[0, -1, -1, -1]]), gt, torch.ones(1, 2), phase)
        on_train_epoch_end(fake_trainer(tmp_path, criterion, epoch))
        assert criterion.tal_stats.summary()["gts"] == 0  # reset after writing
    lines = [json.loads(x) for x in (tmp_path / "tal_stats.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3] and [x["phase"] for x in lines] == ["ATSS", "TAL", "TAL"]
    assert lines[0]["zero_pos_share"] == 0.5 and lines[1]["pos_per_gt"] == 1.5
    assert not (tmp_path / "tal_stats.png").exists()  # drawn once, at the end of training
    on_train_end(fake_trainer(tmp_path, criterion, 2, plots=False))
    assert not (tmp_path / "tal_stats.png").exists()
    trainer = fake_trainer(tmp_path, criterion, 2)
    on_train_end(trainer)
    assert (tmp_path / "tal_stats.png").stat().st_size > 0 and trainer.plotted == [tmp_path / "tal_stats.png"]
    (tmp_path / "tal_stats.png").unlink()
    run_command("tal-stats", [str(tmp_path)])  # the tool draws the same picture from any run
    assert (tmp_path / "tal_stats.png").stat().st_size > 0
    data = plot_tal_stats(tmp_path / "tal_stats.jsonl", tmp_path / "again.png")
    assert data["pos_per_gt/<8"] == [1.0, 2.0, 2.0] and data["zero_pos_share/32-96"] == [1.0, 0.0, 0.0]


def test_callbacks_ignore_models_without_tood_loss(tmp_path):
    on_train_epoch_end(fake_trainer(tmp_path, criterion=None, epoch=0))
    on_train_end(fake_trainer(tmp_path, criterion=None, epoch=0))
    assert not (tmp_path / "tal_stats.jsonl").exists() and not (tmp_path / "tal_stats.png").exists()


def test_resumed_epoch_written_twice_keeps_the_last_line(tmp_path):
    rows = [{"epoch": e, "phase": "TAL", "gts": 1, "pos_per_gt": float(v), "zero_pos_share": 0.0,
             "by_size": {k: {"gts": 0, "pos_per_gt": None, "zero_pos_share": None} for k in SIZE_LABELS}}
            for e, v in ((1, 1), (2, 2), (2, 5))]  # fmt: skip
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = plot_tal_stats(tmp_path / "s.jsonl", tmp_path / "s.png")
    assert data["epoch"] == [1, 2] and data["pos_per_gt/all"] == [1.0, 5.0]


def test_classification_signal_by_hand():
    stats = TALStats()
    assert stats.summary()["cls"] is None  # nothing added yet
    # 1 image, 3 anchors, 2 classes: anchor 0 positive of class 1 (target 0.5), anchor 2 positive of class 0 (0.25)
    scores = torch.tensor([[[0.1, 0.4], [0.3, 0.2], [0.8, 0.6]]])
    target = torch.tensor([[[0.0, 0.5], [0.0, 0.0], [0.25, 0.0]]])
    loss = torch.tensor([[[1.0, 2.0], [3.0, 0.0], [4.0, 0.0]]])
    fg = torch.tensor([[True, False, True]])
    labels = torch.tensor([[1, 2, 0]])  # 2 = background at the negative anchor
    stats.update_cls(scores, target, loss, fg, labels)
    c = stats.summary()["cls"]
    assert c["target_mean"] == pytest.approx((0.5 + 0.25) / 2)
    assert c["score_pos_mean"] == pytest.approx((0.4 + 0.8) / 2)  # the score of each positive's own class
    assert c["score_neg_mean"] == pytest.approx(0.3)  # best class of the one negative anchor
    assert c["loss_pos_share"] == pytest.approx((2.0 + 4.0) / 10.0)
    stats.update_cls(scores, target, loss, torch.zeros(1, 3, dtype=torch.bool), labels)  # no positive: sums add
    c = stats.summary()["cls"]
    assert c["target_mean"] == pytest.approx(0.375)
    assert c["score_neg_mean"] == pytest.approx((0.3 + 0.4 + 0.3 + 0.8) / 4)
    stats.reset()
    assert stats.summary()["cls"] is None


def test_loss_feeds_the_classification_signal_in_training_only():
    from yolo_tood.train.loss import TOODLoss

    head = FakeHead(nc=3)
    criterion = TOODLoss(FakeModel(head))
    batch = random_batch([3, 0, 5], nc=3)
    _, _, preds = random_preds(3, 3, 16, 64)
    head.eval()
    criterion(preds(), batch)
    assert criterion.tal_stats.summary()["cls"] is None
    head.train()
    criterion(preds(), batch)
    c = criterion.tal_stats.summary()["cls"]
    assert 0 < c["target_mean"] <= 1 and 0 < c["score_pos_mean"] < 1 and 0 < c["score_neg_mean"] < 1
    assert 0 < c["loss_pos_share"] < 1


def test_plot_has_the_classification_panel_when_lines_carry_it(tmp_path):
    empty = {k: {"gts": 0, "pos_per_gt": None, "zero_pos_share": None} for k in SIZE_LABELS}
    cls = {"target_mean": 1.0, "score_pos_mean": 0.2, "score_neg_mean": 0.01, "loss_pos_share": 0.4}
    rows = [{"epoch": 1, "phase": "ATSS", "gts": 1, "pos_per_gt": 1.0, "zero_pos_share": 0.0, "by_size": empty,
             "cls": cls}, {"epoch": 2, "phase": "TAL", "gts": 1, "pos_per_gt": 1.0, "zero_pos_share": 0.0,
             "by_size": empty}]  # fmt: skip
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = plot_tal_stats(tmp_path / "s.jsonl", tmp_path / "s.png")
    assert data["cls/score_pos_mean"][0] == 0.2 and data["cls/score_pos_mean"][1] != data["cls/score_pos_mean"][1]
    assert (tmp_path / "s.png").stat().st_size > 0


def test_per_class_counts_by_hand():
    stats = TALStats()
    gt = boxes_of_size([[10.0, 50.0, 10.0], [10.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])[..., None]
    labels = torch.tensor([[2.0, 0.0, 1.0], [2.0, 0.0, 0.0]])[..., None]  # padding slots carry junk classes
    # image 0: GT 0 (class 2) 2 positives, GT 1 (class 0) none; image 1: GT 0 (class 2) 1 positive
    stats.update(assign([[0, 0, -1, -1], [0, -1, -1, -1]]), gt, mask, "TAL", labels, nc=3)
    by_class = stats.summary()["by_class"]
    assert by_class == {
        "0": {"gts": 1, "pos_per_gt": 0.0, "zero_pos_share": 1.0},
        "2": {"gts": 2, "pos_per_gt": 1.5, "zero_pos_share": 0.0},
    }  # class 1 only in padding: not listed
    stats.update(assign([[0, 0, -1, -1], [0, -1, -1, -1]]), gt, mask, "TAL")  # no labels: by_class unchanged
    assert stats.summary()["by_class"] == by_class
