"""Trainer callbacks: the epoch reaches both heads, the losses' warm-up follows the run's epochs, the ATSS->TAL
switch is logged, ignored gains are warned."""

from __future__ import annotations

import copy
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel

from yolo_tood.integration.callbacks import on_train_epoch_start, on_train_start
from yolo_tood.train.loss import TOODLoss

CFG = Path(__file__).resolve().parents[1] / "cfg" / "yolov8n-tood.yaml"


def fake_trainer(epochs: int = 10, start_epoch: int = 0, cfg: Path = CFG, **args) -> SimpleNamespace:
    model = DetectionModel(str(cfg), nc=3, verbose=False)
    model.args = get_cfg(overrides={**args, "epochs": epochs})  # BaseTrainer.set_model_attributes
    ema = SimpleNamespace(ema=copy.deepcopy(model))
    ema.ema.args = model.args  # ModelEMA.update_attr, at each epoch's end
    callbacks = defaultdict(list)  # BaseTrainer.callbacks and add_callback
    return SimpleNamespace(
        model=model, ema=ema, epochs=epochs, start_epoch=start_epoch, epoch=start_epoch, args=model.args,
        callbacks=callbacks, add_callback=lambda event, fn: callbacks[event].append(fn),
    )  # fmt: skip


def warmups(trainer: SimpleNamespace) -> tuple[int, int]:
    """The warm-up of the trained model's loss (which the callbacks create) and of a loss of its EMA copy."""
    return trainer.model.criterion.warmup_epochs(), TOODLoss(trainer.ema.ema).warmup_epochs()


def test_epoch_reaches_model_and_ema_heads_and_switch_is_logged_once(log):
    trainer = fake_trainer(epochs=12, start_epoch=0)
    on_train_start(trainer)
    assert "TOOD: ATSS warm-up for epochs 1-4 of 12 (atss_fraction 0.333), then TAL" in log
    assert any("epoch 1 in the ATSS warm-up phase" in m for m in log)
    for epoch in range(6):
        trainer.epoch = epoch
        on_train_epoch_start(trainer)
        for head in (trainer.model.model[-1], trainer.ema.ema.model[-1]):
            assert head.epoch == epoch
        assert warmups(trainer) == (4, 4)
    assert sum("switching to Task Alignment Learning at epoch 5" in m for m in log) == 1
    assert sum("ATSS warm-up for epochs" in m for m in log) == 1  # stated once


@pytest.mark.parametrize("epochs, warmup", [(1, 0), (10, 3), (60, 20)])
def test_warmup_follows_the_schedule(epochs, warmup, log):
    """The default warm-up is a third of the run's epochs, for the model's and the EMA's losses."""
    trainer = fake_trainer(epochs=epochs)
    on_train_start(trainer)
    assert warmups(trainer) == (warmup, warmup)
    phase = "ATSS warm-up" if warmup else "TAL"
    assert any(f"epoch 1 in the {phase} phase" in m for m in log)
    if not warmup:
        assert "TOOD: no ATSS warm-up (atss_fraction 0.333 of 1 epochs), TAL from epoch 1" in log


def test_resume_after_warmup_starts_in_tal(log):
    """A 30-epoch run (warm-up 10) resumed at epoch 11: the warm-up is resolved from the restored epochs."""
    trainer = fake_trainer(epochs=30, start_epoch=10)
    on_train_start(trainer)
    on_train_epoch_start(trainer)
    assert any("epoch 11 in the TAL phase" in m for m in log)
    assert not any("switching" in m for m in log)  # the switch happened before the interruption
    assert trainer.ema.ema.model[-1].epoch == 10 and warmups(trainer) == (10, 10)


def test_changed_epochs_during_training_are_followed(log):
    """``time=`` training recomputes trainer.epochs after the first epoch: the warm-up follows, and says so."""
    trainer = fake_trainer(epochs=30)
    on_train_start(trainer)
    trainer.epoch, trainer.epochs = 1, 60
    trainer.args.epochs = 60  # BaseTrainer sets both
    on_train_epoch_start(trainer)
    assert warmups(trainer) == (20, 20)
    assert any("epochs 1-20 of 60" in m and "changed" in m for m in log)


def test_warmup_longer_than_training_and_changed_stock_gains_are_warned(log, tmp_path):
    d = yaml.safe_load(CFG.with_name("yolov8-tood.yaml").read_text())
    d["atss_epochs"] = 4
    cfg = tmp_path / "yolov8n-tood.yaml"
    cfg.write_text(yaml.safe_dump(d, sort_keys=False))
    on_train_start(fake_trainer(epochs=3, cfg=cfg, box=5.0, dfl=2.0))
    assert any("atss_epochs=4 gives an ATSS warm-up of 4 epochs >= epochs=3" in m for m in log)
    assert any("{'box': 5.0, 'dfl': 2.0}" in m and "box_gain" in m for m in log)
