"""Detect ultralytics' NMS time limit, which silently drops detections and so corrupts validation figures.

Ultralytics' ``non_max_suppression`` stops after ``2.0 + 0.05 * batch`` seconds and only logs
``WARNING ⚠️ NMS time limit ...s exceeded``; the images not yet processed get no detections, and the validator
reports a lower mAP without an error. On a busy CPU, a model with many candidates (TOOD without a pre-NMS bound)
hit it on every batch-16 validation. Benchmarks and comparisons run by this project therefore watch the log with
``NMSTimeLimitGuard`` and fail, or re-validate with batch 1, when it fires.
"""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

T = TypeVar("T")

__all__ = ("NMS_TIME_LIMIT_MESSAGE", "NMSTimeLimitError", "NMSTimeLimitGuard", "run_with_batch1_retry")

NMS_TIME_LIMIT_MESSAGE = "NMS time limit"  # start of ultralytics' warning (ultralytics.utils.nms)


class NMSTimeLimitError(RuntimeError):
    """Raised when ultralytics' NMS time limit was hit, so the validation figures are void."""


class NMSTimeLimitGuard(logging.Handler):
    """Count ultralytics' NMS time-limit warnings while active (a context manager on the ``ultralytics`` logger).

    Args:
        raise_on_exit (bool): Raise ``NMSTimeLimitError`` when leaving the context if the warning appeared.
        what (str): Name of the guarded job, for the error message.

    Examples:
        >>> with NMSTimeLimitGuard() as guard:
        ...     logging.getLogger("ultralytics").warning("NMS time limit 2.800s exceeded")
        >>> guard.hits
        1
    """

    def __init__(self, raise_on_exit: bool = False, what: str = "validation"):
        """Initialise with no hits."""
        super().__init__(logging.WARNING)
        self.hits = 0
        self.raise_on_exit = raise_on_exit
        self.what = what

    def emit(self, record: logging.LogRecord) -> None:
        """Count a record that carries ultralytics' NMS time-limit warning."""
        if NMS_TIME_LIMIT_MESSAGE in record.getMessage():
            self.hits += 1

    def __enter__(self) -> NMSTimeLimitGuard:
        """Attach to ultralytics' logger."""
        logging.getLogger("ultralytics").addHandler(self)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Detach, and raise when asked to and the limit was hit (unless another exception is propagating)."""
        logging.getLogger("ultralytics").removeHandler(self)
        if self.raise_on_exit and self.hits and exc_type is None:
            raise NMSTimeLimitError(
                f"ultralytics' NMS time limit was exceeded {self.hits} time(s) during {self.what}: detections were "
                "dropped and its figures are void; re-run with batch=1 or on an idle machine"
            )


def run_with_batch1_retry(run: Callable[[int], T], batch: int, what: str) -> tuple[T, int]:
    """Run a validation at ``batch``; if ultralytics' NMS time limit fires, its figures are void: run it at batch 1.

    The time limit is per batch (``2.0 + 0.05 * batch`` s), so one image at a time leaves NMS 2 s per image.

    Args:
        run (Callable[[int], T]): The validation, given a batch size.
        batch (int): The batch size to try first.
        what (str): Name of the job, for the error of a batch-1 run that hits the limit too.

    Returns:
        (tuple): The result of the run that counts, and the number of hits of the first run (0: no re-run).

    Raises:
        NMSTimeLimitError: If the batch-1 run hits the limit as well.
    """
    with NMSTimeLimitGuard() as guard:
        result = run(batch)
    if guard.hits:
        with NMSTimeLimitGuard(raise_on_exit=True, what=f"the batch-1 {what}"):
            result = run(1)
    return result, guard.hits
