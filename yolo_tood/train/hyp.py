"""TOOD training hyper-parameters, read from top-level keys of the model YAML.

Ultralytics rejects unknown train arguments, so the TOOD-specific gains and assigner settings live in the model YAML
(``yolov8-tood.yaml``) and are read once by ``TOODLoss`` through ``TOODHyp.from_yaml(model.yaml)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields
from typing import Any, get_type_hints

from ultralytics.utils import LOGGER

from ..checks import check_int

__all__ = ("HypKey", "TOODHyp", "check_warmup", "hyp_schema")


@dataclass(frozen=True)
class HypKey:
    """One TOOD hyper-parameter: a top-level key of the model YAML.

    Attributes:
        name (str): The YAML key and ``TOODHyp`` field.
        type (type): ``int`` or ``float``.
        default (int | float): Value when the key is absent.
        minimum (int | float): Smallest allowed value.
        maximum (float | None): Largest allowed value, None for unbounded.
        help (str): One line on what it is.
    """

    name: str
    type: type
    default: int | float
    minimum: int | float
    maximum: float | None
    help: str

    def check(self, value: Any) -> int | float:
        """Return ``value`` validated (and a float key's value as a float), or raise one ValueError line."""
        if self.type is int:
            return check_int(value, self.name, "TOOD", self.minimum)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            value_ok = False
        else:
            value_ok = value >= self.minimum and (self.maximum is None or value <= self.maximum)
        if not value_ok:
            rule = f">= {self.minimum:g}" if self.maximum is None else f"in [{self.minimum:g}, {self.maximum:g}]"
            raise ValueError(f"TOOD: '{self.name}' must be a finite number {rule}, got {value!r}")
        return float(value)


def _key(default: int | float, help: str, minimum: int | float = 0, maximum: float | None = None) -> Any:
    """A ``TOODHyp`` field with its bounds and help text (read back by ``hyp_schema``)."""
    return field(default=default, metadata={"minimum": minimum, "maximum": maximum, "help": help})


@dataclass(frozen=True)
class TOODHyp:
    """Hyper-parameters of Task Alignment Learning (TOOD, ICCV 2021) and of its losses.

    Every field is a top-level key of the model YAML with the same name; a missing key takes the default below, which
    is the paper's / MMDetection's ``tood_r50_fpn_1x_coco`` recipe unless stated otherwise.

    Attributes:
        tal_topk (int): m, the number of anchors with the largest alignment metric t kept per ground truth (mmdet
            TaskAlignedAssigner topk=13). The paper finds AP flat for m in 5..21.
        tal_alpha (float): alpha in t = s^alpha * u^beta (s: score of the GT's class, u: IoU). Default 1.0.
        tal_beta (float): beta in t = s^alpha * u^beta. Default 6.0. Paper ablation (alpha, beta) -> AP:
            (0.5, 2) 42.4, (0.5, 6) 41.7, (1, 6) 42.5, (1.5, 8) 41.5.
        atss_epochs (int): number of warm-up epochs trained with the ATSS assigner and Focal loss before TAL
            (mmdet ``initial_epoch=4``). The authors report 41.8 AP without and 42.3 AP with the warm-up
            (fcjian/TOOD#11). 0 disables the warm-up.
        atss_topk (int): ATSS candidates per level per ground truth during the warm-up (mmdet ATSSAssigner topk=9).
        qfl_beta (float): beta of the Quality Focal Loss used with TAL (mmdet QualityFocalLoss beta=2.0).
        focal_gamma (float): gamma of the warm-up Focal loss (mmdet FocalLoss gamma=2.0).
        focal_alpha (float): alpha of the warm-up Focal loss, in [0, 1] (mmdet FocalLoss alpha=0.25).
        box_gain (float): weight of the GIoU loss (mmdet ``loss_bbox=GIoULoss(loss_weight=2.0)``).
        cls_gain (float): weight of the classification loss (QFL / Focal, mmdet loss_weight=1.0).
        dfl_gain (float): weight of the Distribution Focal Loss; only with ``reg_max > 1`` (with ``reg_max: 1`` it
            weighs ultralytics' L1 distance loss). TOOD itself regresses plain distances and has no DFL; 0.5 is
            PP-YOLOE's weight for DFL next to TAL (topk 13, alpha 1, beta 6) and GIoU (2.5), the closest published
            recipe that combines TAL with DFL.

    Examples:
        >>> hyp = TOODHyp.from_yaml({"tal_topk": 9, "nc": 80})
        >>> hyp.tal_topk, hyp.tal_beta
        (9, 6.0)
    """

    tal_topk: int = _key(13, "m: anchors with the largest alignment metric t kept per GT", minimum=1)
    tal_alpha: float = _key(1.0, "alpha in t = s^alpha * u^beta")
    tal_beta: float = _key(6.0, "beta in t = s^alpha * u^beta")
    atss_epochs: int = _key(4, "warm-up epochs with ATSS + Focal loss before TAL; 0 disables it")
    atss_topk: int = _key(9, "ATSS candidates per level per GT during the warm-up", minimum=1)
    qfl_beta: float = _key(2.0, "beta of the Quality Focal Loss (TAL phase)")
    focal_gamma: float = _key(2.0, "gamma of the warm-up Focal loss")
    focal_alpha: float = _key(0.25, "alpha of the warm-up Focal loss", maximum=1.0)
    box_gain: float = _key(2.0, "GIoU loss weight")
    cls_gain: float = _key(1.0, "QFL / Focal loss weight")
    dfl_gain: float = _key(0.5, "DFL weight (L1 when reg_max is 1)")

    def __post_init__(self) -> None:
        """Validate every field, raising one ValueError line that names the key, the rule and the bad value."""
        for key in hyp_schema():
            object.__setattr__(self, key.name, key.check(getattr(self, key.name)))  # frozen: float keys as floats

    @classmethod
    def from_yaml(cls, d: dict[str, Any] | None) -> TOODHyp:
        """Build the hyper-parameters from the top-level keys of a model YAML dict; other keys are ignored.

        Args:
            d (dict | None): The model YAML as a dict (``model.yaml``); None or {} gives the defaults.

        Returns:
            (TOODHyp): The validated hyper-parameters.

        Raises:
            ValueError: If a value has the wrong type or range (one line naming the key).

        Examples:
            >>> TOODHyp.from_yaml({"atss_epochs": 0}).atss_epochs
            0
        """
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ValueError(f"TOOD: the model YAML must be a dict, got {type(d).__name__}")
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})


@functools.cache
def hyp_schema() -> tuple[HypKey, ...]:
    """Return the TOOD hyper-parameters (names, types, defaults, bounds, help) in ``TOODHyp`` field order.

    The one schema: the YAML validation, the README table test and ``scripts/compare.py``'s variants derive from it.

    Examples:
        >>> [k.name for k in hyp_schema()][:3]
        ['tal_topk', 'tal_alpha', 'tal_beta']
    """
    types = get_type_hints(TOODHyp)
    return tuple(
        HypKey(f.name, types[f.name], f.default, f.metadata["minimum"], f.metadata["maximum"], f.metadata["help"])
        for f in fields(TOODHyp)
    )


def check_warmup(hyp: TOODHyp, epochs: int) -> bool:
    """Warn when the ATSS warm-up is as long as or longer than the whole training, so TAL would never run.

    A warm-up shorter than a third of the training (the paper's proportion, 4 of 12 epochs) is logged as information.

    Args:
        hyp (TOODHyp): The TOOD hyper-parameters.
        epochs (int): Number of training epochs.

    Returns:
        (bool): True if the warm-up is shorter than the training (TAL will be used), False if a warning was emitted.

    Examples:
        >>> check_warmup(TOODHyp(), epochs=100)
        True
    """
    if hyp.atss_epochs >= epochs:
        LOGGER.warning(
            f"TOOD: atss_epochs={hyp.atss_epochs} >= epochs={epochs}, so the whole training uses the ATSS warm-up "
            "(Focal loss) and Task Alignment Learning never starts; set 'atss_epochs' in the model YAML below epochs."
        )
        return False
    if 0 < 3 * hyp.atss_epochs < epochs:
        LOGGER.info(
            f"TOOD: ATSS warm-up {hyp.atss_epochs} of {epochs} epochs. The paper warms up for a third of its schedule "
            "(4 of 12); on BCCD a third (20 of 60) beat 4 by ~2 mAP50-95 points (BENCHMARKS.md). Set 'atss_epochs' in "
            "the model YAML to change it."
        )
    return True
