"""Trainer callbacks: the epoch reaches both heads, the ATSS->TAL switch is logged, ignored gains are warned."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils import LOGGER

from yolo_tood.integration.callbacks import on_train_epoch_start, on_train_start

CFG = Path(__file__).resolve().parents[1] / "cfg" / "yolov8n-tood.yaml"


class Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def log():
    handler = Records()
    LOGGER.addHandler(handler)
    yield handler.messages
    LOGGER.removeHandler(handler)


def fake_trainer(epochs: int = 10, start_epoch: int = 0, **args) -> SimpleNamespace:
    model = DetectionModel(str(CFG), nc=3, verbose=False)
    ema = SimpleNamespace(ema=copy.deepcopy(model))
    return SimpleNamespace(
        model=model, ema=ema, epochs=epochs, start_epoch=start_epoch, epoch=start_epoch, args=get_cfg(overrides=args)
    )


def test_epoch_reaches_model_and_ema_heads_and_switch_is_logged_once(log):
    trainer = fake_trainer(start_epoch=0)
    on_train_start(trainer)
    assert any("epoch 1 in the ATSS warm-up phase" in m for m in log)
    for epoch in range(6):
        trainer.epoch = epoch
        on_train_epoch_start(trainer)
        assert trainer.model.model[-1].epoch == epoch and trainer.ema.ema.model[-1].epoch == epoch
    assert sum("switching to Task Alignment Learning at epoch 5" in m for m in log) == 1


def test_resume_after_warmup_starts_in_tal(log):
    trainer = fake_trainer(start_epoch=6)
    on_train_start(trainer)
    on_train_epoch_start(trainer)
    assert any("epoch 7 in the TAL phase" in m for m in log)
    assert not any("switching" in m for m in log)  # the switch happened before the interruption
    assert trainer.ema.ema.model[-1].epoch == 6


def test_warmup_longer_than_training_and_changed_stock_gains_are_warned(log):
    on_train_start(fake_trainer(epochs=3, box=5.0, dfl=2.0))
    assert any("atss_epochs=4 >= epochs=3" in m for m in log)
    assert any("{'box': 5.0, 'dfl': 2.0}" in m and "box_gain" in m for m in log)
