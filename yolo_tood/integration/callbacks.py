"""Trainer callbacks of TOOD models: the trainer's epoch on the head (ATSS warm-up or TAL), and train-start checks.

Added to ultralytics' ``default_callbacks`` by ``yolo_tood.integration.register``; models without a TOOD head pass
through untouched.
"""

from __future__ import annotations

from typing import Any

from .heads import is_tood_head

__all__ = ("on_train_epoch_start", "on_train_start")


def _tood_heads(trainer: Any) -> list:
    """Return the TOOD heads of the trainer's model and of its EMA copy (used for the validation losses)."""
    from ultralytics.utils.torch_utils import unwrap_model

    models = [trainer.model, getattr(getattr(trainer, "ema", None), "ema", None)]
    heads = [unwrap_model(m).model[-1] for m in models if m is not None and hasattr(unwrap_model(m), "model")]
    return [h for h in heads if is_tood_head(h)]


def on_train_start(trainer: Any) -> None:
    """Check the TOOD settings against the train arguments and say which phase training starts in.

    Warns when the ATSS warm-up is not shorter than the training, when the stock loss gains (``box``, ``cls``,
    ``dfl``) were changed (they belong to v8DetectionLoss, TOOD's gains are keys of the model YAML), and when class
    weights were asked for (``cls_pw``; v8DetectionLoss weighs its BCE with them, TOOD's losses have no counterpart).
    """
    if heads := _tood_heads(trainer):
        from ultralytics.cfg import DEFAULT_CFG_DICT
        from ultralytics.utils import LOGGER
        from ultralytics.utils.torch_utils import unwrap_model

        from ..train.hyp import TOODHyp, check_warmup

        hyp = TOODHyp.from_yaml(unwrap_model(trainer.model).yaml)
        check_warmup(hyp, trainer.epochs)
        if changed := {
            k: getattr(trainer.args, k)
            for k in ("box", "cls", "dfl")
            if getattr(trainer.args, k) != DEFAULT_CFG_DICT[k]
        }:
            LOGGER.warning(
                f"TOOD: train arguments {changed} are gains of ultralytics' v8DetectionLoss and do not apply to TOOD "
                "models; set box_gain, cls_gain and dfl_gain in the model YAML instead"
            )
        if getattr(trainer.args, "cls_pw", 0) != DEFAULT_CFG_DICT.get("cls_pw", 0):
            LOGGER.warning(
                f"TOOD: train argument cls_pw={trainer.args.cls_pw} weighs ultralytics' v8DetectionLoss classes and "
                "has no effect on TOOD models (their QFL/Focal losses are not class-weighted)"
            )
        warmup = f"ATSS for epochs 1-{hyp.atss_epochs}, then TAL" if hyp.atss_epochs else "no ATSS warm-up"
        phase = "ATSS warm-up" if trainer.start_epoch < hyp.atss_epochs else "TAL"
        LOGGER.info(f"TOOD: starting at epoch {trainer.start_epoch + 1} in the {phase} phase ({warmup})")
        for head in heads:
            head.epoch = trainer.start_epoch


def on_train_epoch_start(trainer: Any) -> None:
    """Set the trainer's epoch on the TOOD heads, and log the switch from ATSS to TAL once."""
    if heads := _tood_heads(trainer):
        from ultralytics.utils.torch_utils import unwrap_model

        from ..train.hyp import TOODHyp

        for head in heads:
            head.epoch = trainer.epoch
        atss_epochs = TOODHyp.from_yaml(unwrap_model(trainer.model).yaml).atss_epochs
        if trainer.epoch == atss_epochs and atss_epochs > 0 and trainer.epoch != trainer.start_epoch:
            from ultralytics.utils import LOGGER

            LOGGER.info(f"TOOD: ATSS warm-up done, switching to Task Alignment Learning at epoch {trainer.epoch + 1}")
