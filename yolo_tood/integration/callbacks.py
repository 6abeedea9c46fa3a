"""Trainer callbacks of TOOD models: the epoch on the head (ATSS or TAL), train-start checks, statistics.

Added to ultralytics' ``default_callbacks`` by ``yolo_tood.integration.register``; models without a TOOD head pass
through untouched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .heads import is_tood_head

__all__ = (
    "on_pretrain_routine_start",
    "on_train_end",
    "on_train_epoch_end",
    "on_train_epoch_start",
    "on_train_start",
)


def _models(trainer: Any) -> list:
    """Return the trainer's model and its EMA copy (which computes the validation losses), unwrapped, if present."""
    from ultralytics.utils.torch_utils import unwrap_model

    models = [trainer.model, getattr(getattr(trainer, "ema", None), "ema", None)]
    return [unwrap_model(m) for m in models if m is not None]


def _tood_heads(trainer: Any) -> list:
    """Return the TOOD heads of the trainer's model and of its EMA copy (used for the validation losses)."""
    heads = [m.model[-1] for m in _models(trainer) if hasattr(m, "model")]
    return [h for h in heads if is_tood_head(h)]


# The warm-up length last logged per trainer (by id), so that a change of the run's length (time=) is logged once
_logged_warmup: dict[int, int] = {}


def _tood_loss(trainer: Any) -> Any:
    """Return the trained model's ``TOODLoss`` (its one-to-many branch on an end-to-end head), which owns the TOOD
    hyper-parameters and the warm-up length; created here when the first batch has not created it yet, as
    ``BaseTrainer`` creates it itself when it resumes an end-to-end run."""
    from ultralytics.utils.torch_utils import unwrap_model

    model = unwrap_model(trainer.model)
    if getattr(model, "criterion", None) is None:
        model.criterion = model.init_criterion()
    return _tood_losses(model.criterion)[0]


def _set_epoch(heads: list, epoch: int) -> None:
    """Set the trainer's 0-based epoch on the TOOD heads of the model and its EMA copy (the loss reads the phase)."""
    for head in heads:
        head.epoch = epoch


def on_pretrain_routine_start(trainer: Any) -> None:
    """Check the TOOD train arguments' values as soon as the trainer exists, before datasets and model are set up.

    Whether the model has a TOOD head is only known at ``on_train_start``, which checks the rest.
    """
    from ..train.hyp import train_overrides

    train_overrides(trainer.args)  # raises the schema's one line for a bad value


def _reject_tood_args(trainer: Any) -> None:
    """Raise one line naming the TOOD train arguments set for a model without a TOOD head (they would do nothing)."""
    from ..train.hyp import hyp_schema

    if given := [f"{k.name}={v}" for k in hyp_schema() if (v := getattr(trainer.args, k.name, None)) is not None]:
        what = "are yolo-tood keys" if len(given) > 1 else "is a yolo-tood key"
        raise ValueError(
            f"{', '.join(given)} {what} and this model has no TOOD head; train a TOOD model "
            "(e.g. model=yolov8n-tood.yaml) or drop the TOOD keys"
        )


def on_train_start(trainer: Any) -> None:
    """Resolve the ATSS warm-up, check the TOOD settings against the train arguments and say which phase starts.

    A model without a TOOD head given TOOD train arguments (``tal_topk=9``) is an error naming them. For a TOOD head,
    ``on_train_end`` is added to this trainer's callbacks (it draws ``tal_stats.png``).

    Logs the resolved warm-up once ("TOOD: ATSS warm-up for epochs 1-20 of 60 (atss_fraction 0.333), then TAL"),
    warns when the warm-up is not shorter than the training, when the stock loss gains (``box``, ``cls``, ``dfl``)
    were changed (they belong to v8DetectionLoss, TOOD's gains are keys of the model YAML), and when class weights
    were asked for (``cls_pw``; v8DetectionLoss weighs its BCE with them, TOOD's losses have no counterpart).
    """
    heads = _tood_heads(trainer)
    if not heads:
        _reject_tood_args(trainer)
    else:
        from ultralytics.cfg import DEFAULT_CFG_DICT
        from ultralytics.utils import LOGGER

        from ..train.hyp import check_warmup, train_overrides

        loss = _tood_loss(trainer)
        hyp, warmup = loss.tood_hyp, loss.warmup_epochs()
        _logged_warmup[id(trainer)] = warmup
        if on_train_end not in trainer.callbacks["on_train_end"]:  # this trainer's: stock runs keep their callbacks
            trainer.add_callback("on_train_end", on_train_end)
        if given := train_overrides(trainer.args):
            given = ", ".join(f"{k}={v}" for k, v in given.items())
            LOGGER.info(f"TOOD: train arguments {given} override the model YAML")
        LOGGER.info(hyp.describe_warmup(trainer.epochs))
        check_warmup(hyp, trainer.epochs)
        if changed := {
            k: getattr(trainer.args, k)
            for k in ("box", "cls", "dfl")
            if getattr(trainer.args, k) != DEFAULT_CFG_DICT[k]
        }:
            LOGGER.warning(
                f"TOOD: train arguments {changed} are gains of ultralytics' v8DetectionLoss and do not apply to TOOD "
                "models; use TOOD's box_gain, cls_gain and dfl_gain (train arguments or model YAML keys) instead"
            )
        if getattr(trainer.args, "cls_pw", 0) != DEFAULT_CFG_DICT.get("cls_pw", 0):
            LOGGER.warning(
                f"TOOD: train argument cls_pw={trainer.args.cls_pw} weighs ultralytics' v8DetectionLoss classes and "
                "has no effect on TOOD models (their QFL/Focal losses are not class-weighted)"
            )
        phase = "ATSS warm-up" if trainer.start_epoch < warmup else "TAL"
        LOGGER.info(f"TOOD: starting at epoch {trainer.start_epoch + 1} in the {phase} phase")
        _set_epoch(heads, trainer.start_epoch)


def on_train_epoch_start(trainer: Any) -> None:
    """Set the trainer's epoch on the TOOD heads; log the switch from ATSS to TAL once.

    ``time=`` training recomputes the run's length after the first epoch, and the loss's warm-up follows it; a
    change is logged.
    """
    if heads := _tood_heads(trainer):
        from ultralytics.utils import LOGGER

        loss = _tood_loss(trainer)
        warmup = loss.warmup_epochs()
        if _logged_warmup.setdefault(id(trainer), warmup) != warmup:
            _logged_warmup[id(trainer)] = warmup
            LOGGER.info(f"{loss.tood_hyp.describe_warmup(trainer.epochs)} (epochs changed during training)")
        _set_epoch(heads, trainer.epoch)
        if trainer.epoch == warmup and warmup > 0 and trainer.epoch != trainer.start_epoch:
            LOGGER.info(f"TOOD: ATSS warm-up done, switching to Task Alignment Learning at epoch {trainer.epoch + 1}")


def _tood_losses(criterion: Any) -> list[Any]:
    """Return the ``TOODLoss`` instances of a criterion: itself, or an ``E2ELoss``'s one-to-many and one-to-one
    branches (end-to-end heads), one-to-many first; [] for other criteria."""
    from ..train.loss import TOODLoss

    branches = [getattr(criterion, "one2many", None), getattr(criterion, "one2one", None)]
    return [c for c in ([criterion] if isinstance(criterion, TOODLoss) else branches) if isinstance(c, TOODLoss)]


def _log_dropped_boxes(trainer: Any) -> None:
    """Log once how many zero-size GT boxes the TOOD losses dropped during the epoch, and reset the counts.

    The counts of the trained model's loss and of the EMA model's loss (validation losses) are summed; the EMA's
    validation of the previous epoch runs after this callback, so its drops are reported with the next epoch.
    """
    losses = [c for m in _models(trainer) for c in _tood_losses(getattr(m, "criterion", None))]
    losses = list({id(c): c for c in losses}.values())
    if dropped := sum(c.dropped_boxes for c in losses):
        from ultralytics.utils import LOGGER

        LOGGER.warning(f"TOOD: dropped {dropped} zero-size boxes this epoch")
    for c in losses:
        c.dropped_boxes = 0


def on_train_epoch_end(trainer: Any) -> None:
    """Log the zero-size boxes dropped this epoch; append the assignment statistics to ``tal_stats.jsonl``.

    Runs before the epoch's validation, so validation losses never reach the statistics.
    """
    _log_dropped_boxes(trainer)  # only TOOD criteria count dropped boxes
    from ultralytics.utils import RANK

    from ..train.tal_stats import STATS_FILE

    # the trainer model's TOODLoss (created at the first training step); an end-to-end head's E2ELoss holds one per
    # branch: the one-to-many branch's statistics are written, the others' reset
    losses = _tood_losses(getattr(_models(trainer)[0], "criterion", None))
    if not losses:
        return
    summary, *_ = (loss.take_tal_stats() for loss in losses)  # the epoch's statistics; each loss starts the next's
    if RANK in {-1, 0}:
        path = Path(trainer.save_dir) / STATS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps({"epoch": trainer.epoch + 1, **summary}) + "\n")


def on_train_end(trainer: Any) -> None:
    """Draw ``tal_stats.png`` from the run's ``tal_stats.jsonl`` when ``plots=True``, as ultralytics draws results.png.

    The trainer runs it on rank 0 only, after its own plots. A failure to draw is a warning: the run is done and its
    weights are saved, so a plot must not turn it into an error (ultralytics' ``plot_results`` does the same).
    """
    from ..train.tal_stats import PLOT_FILE, STATS_FILE, plot_tal_stats

    path = Path(trainer.save_dir) / STATS_FILE
    if not getattr(trainer.args, "plots", False) or not path.is_file():
        return
    try:
        plot_tal_stats(path, path.with_name(PLOT_FILE))
    except Exception as e:
        from ultralytics.utils import LOGGER

        LOGGER.warning(f"TOOD: plotting {path} failed: {e}")
    else:
        trainer.on_plot(path.with_name(PLOT_FILE))  # registered in trainer.plots, where logger integrations read
