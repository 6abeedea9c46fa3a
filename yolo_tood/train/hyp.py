"""TOOD training hyper-parameters: top-level keys of the model YAML, which train arguments of the same name override.

The model YAML (``yolov8-tood.yaml``) gives the defaults; ``yolo_tood.integration.register.add_train_args`` makes every
key a train argument too (``yolo train ... tal_topk=9``, ``model.train(tal_topk=9)``), default None = the YAML's
value. ``TOODLoss`` reads both through ``TOODHyp.from_yaml(model.yaml, model.args)``; the training callbacks read
the loss's.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, fields
from typing import Any, Optional, get_type_hints

from ..checks import check_int

__all__ = (
    "ATSS_CLS_TARGETS",
    "TOPK_MODES",
    "HypKey",
    "TOODHyp",
    "check_warmup",
    "hyp_schema",
    "train_arg",
    "train_overrides",
)


TOPK_MODES = ("fixed", "dynamic")
ATSS_CLS_TARGETS = ("hard", "iou")  # warm-up classification targets, see TOODHyp.atss_cls_target


@dataclass(frozen=True)
class HypKey:
    """One TOOD hyper-parameter: a top-level key of the model YAML.

    Attributes:
        name (str): The YAML key and ``TOODHyp`` field.
        type (type): ``int``, ``float`` or ``str``.
        default (int | float | str | None): Value when the key is absent.
        minimum (int | float): Smallest allowed value (numbers).
        maximum (float | None): Largest allowed value, None for unbounded (numbers).
        help (str): One line on what it is.
        choices (tuple[str, ...] | None): Allowed values of a ``str`` key.
        optional (bool): Whether None (YAML ``null``) is allowed.
        below_maximum (bool): Whether ``maximum`` itself is excluded (a half-open range).
    """

    name: str
    type: type
    default: int | float | str | None
    minimum: int | float
    maximum: float | None
    help: str
    choices: tuple[str, ...] | None = None
    optional: bool = False
    below_maximum: bool = False

    def check(self, value: Any) -> int | float | str | None:
        """Return ``value`` validated (and a float key's value as a float), or raise one ValueError line."""
        if value is None and self.optional:
            return None
        if self.type is str:
            if value not in (self.choices or ()):
                raise ValueError(f"TOOD: '{self.name}' must be one of {self.choices}, got {value!r}")
            return value
        if self.type is int:
            return check_int(value, self.name, "TOOD", self.minimum)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            value_ok = False
        else:
            if self.maximum is None:
                below = True
            else:
                below = value < self.maximum if self.below_maximum else value <= self.maximum
            value_ok = value >= self.minimum and below
        if not value_ok:
            bracket = ")" if self.below_maximum else "]"
            rule = (
                f">= {self.minimum:g}" if self.maximum is None else f"in [{self.minimum:g}, {self.maximum:g}{bracket}"
            )
            raise ValueError(f"TOOD: '{self.name}' must be a finite number {rule}, got {value!r}")
        return float(value)

    @property
    def rule(self) -> str:
        """The allowed values in words, for tables and help texts."""
        if self.type is str:
            return " | ".join(self.choices or ())
        if self.type is int:
            rule = f"int >= {self.minimum}"
        else:
            bracket = ")" if self.below_maximum else "]"
            rule = (
                f"float >= {self.minimum:g}"
                if self.maximum is None
                else f"float in [{self.minimum:g}, {self.maximum:g}{bracket}"
            )
        return rule + (" or null" if self.optional else "")


def _key(
    default: Any,
    help: str,
    minimum: int | float = 0,
    maximum: float | None = None,
    choices: tuple[str, ...] | None = None,
    optional: bool = False,
    below_maximum: bool = False,
) -> Any:
    """A ``TOODHyp`` field with its bounds and help text (read back by ``hyp_schema``)."""
    meta = dict(minimum=minimum, maximum=maximum, help=help, choices=choices, optional=optional)
    return field(default=default, metadata={**meta, "below_maximum": below_maximum})


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
        atss_fraction (float): length of the ATSS + Focal loss warm-up before TAL as a fraction of the run's
            ``epochs``, in [0, 1); resolved as round(atss_fraction * epochs), halves up (1/3: 1 epoch -> 0, 10 -> 3,
            12 -> 4, 60 -> 20). Default one third, the proportion of every TAL detector with an ATSS warm-up: TOOD 4 of
            12 epochs (mmdet ``initial_epoch=4``), PP-YOLOE 100 of 300, PP-YOLOE+ 30 of 80 (why a fraction and not the
            reference's 4 epochs: docs/tal.md). 0 disables the warm-up.
        atss_epochs (int | None): an explicit number of warm-up epochs, overriding ``atss_fraction``; None (the
            default) uses the fraction. The authors report 41.8 AP without and 42.3 AP with the warm-up
            (fcjian/TOOD#11). 0 disables the warm-up.
        tal_topk_mode (str): "fixed" (default, the paper's: m = tal_topk for every GT) or "dynamic": m per GT from its
            size, from tal_topk_max for small GTs down to tal_topk_min for large ones (an opt-in addition, see
            ``yolo_tood.train.assigner.dynamic_topk`` for the rule).
        tal_topk_min (int): smallest m of the dynamic mode (for GTs of sqrt(w*h) >= 96 px). Default 5.
        tal_topk_max (int): largest m of the dynamic mode (for GTs of sqrt(w*h) <= 8 px). Default 21; 5..21 is the
            range over which the paper found AP flat.
        tal_min_size (float): GT sides shorter than this many input pixels are widened to it, about the box centre,
            for the centre-in-GT test of both assigners only (targets and IoUs keep the real box). 0 (default) is
            the reference's strict test, which gives a GT lying between anchor centres no positive; ultralytics'
            STAL uses 16 (stride 16) for the same purpose. Opt-in, see BENCHMARKS.md for its measurement.
        atss_topk (int): ATSS candidates per level per ground truth during the warm-up (mmdet ATSSAssigner topk=9).
        atss_cls_target (str): classification target of the warm-up: "hard" (default, the reference: Focal loss
            with label 1 at the positives) or "iou" (opt-in: Quality Focal Loss towards the IoU of the predicted box
            with its GT, normalised by the number of positives, as GFL trains with ATSS). With hard labels the score
            ranks boxes by class only during the warm-up (a third of the run), and val mAP50-95 lags stock's until TAL
            starts (BENCHMARKS.md).
        atss_min_pos (int): every GT keeps at least this many of its ATSS candidates (the best by IoU among those whose
            centre is inside it) during the warm-up, however high the mean + std threshold is. 0 (default) is the
            reference. With YOLO's 3 levels the threshold can exceed every candidate of a large GT, which then trains
            as background (``yolo_tood.train.assigner.ATSSAssigner``). Opt-in, see BENCHMARKS.md.
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
    tal_topk_mode: str = _key(
        "fixed", "fixed: m = tal_topk for every GT; dynamic: m from the GT size", choices=TOPK_MODES
    )
    tal_topk_min: int = _key(5, "smallest m of the dynamic mode (GTs >= 96 px)", minimum=1)
    tal_topk_max: int = _key(21, "largest m of the dynamic mode (GTs <= 8 px)", minimum=1)
    tal_min_size: float = _key(
        0.0, "GT sides shorter than this (px) widened to it for the centre-in-GT test (0: the reference)", minimum=0.0
    )
    atss_fraction: float = _key(
        1 / 3, "ATSS + Focal warm-up before TAL, as a fraction of the run's epochs", maximum=1.0, below_maximum=True
    )
    atss_epochs: Optional[int] = _key(None, "explicit warm-up epochs, overriding atss_fraction", optional=True)
    atss_topk: int = _key(9, "ATSS candidates per level per GT during the warm-up", minimum=1)
    atss_cls_target: str = _key(
        "hard", "warm-up cls target: hard (Focal, the reference) or iou (QFL towards the IoU)", choices=ATSS_CLS_TARGETS
    )
    atss_min_pos: int = _key(
        0, "ATSS positives kept per GT at least (its best inside candidates; 0: the reference)", minimum=0
    )
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
        if self.tal_topk_min > self.tal_topk_max:
            raise ValueError(
                f"TOOD: 'tal_topk_min' ({self.tal_topk_min}) must not exceed 'tal_topk_max' ({self.tal_topk_max})"
            )

    def warmup_epochs(self, epochs: int) -> int:
        """Return the number of ATSS warm-up epochs of a run of ``epochs`` epochs.

        ``atss_epochs`` when given, else round(atss_fraction * epochs) with halves rounded up (Python's ``round``
        would round 2.5 down to 2 but 3.5 up to 4).

        Args:
            epochs (int): The run's number of epochs (the trainer's ``epochs``, which ``resume`` restores).

        Returns:
            (int): Warm-up epochs; the epochs with 0-based index below it use ATSS.

        Examples:
            >>> [TOODHyp().warmup_epochs(e) for e in (1, 10, 12, 60)]
            [0, 3, 4, 20]
            >>> TOODHyp(atss_epochs=4).warmup_epochs(60)
            4
        """
        if self.atss_epochs is not None:
            return self.atss_epochs
        return math.floor(self.atss_fraction * epochs + 0.5)

    def describe_warmup(self, epochs: int) -> str:
        """Return the resolved warm-up as one log line, e.g. "ATSS warm-up for epochs 1-20 of 60 (...), then TAL".

        Examples:
            >>> TOODHyp(atss_fraction=0.333).describe_warmup(60)
            'TOOD: ATSS warm-up for epochs 1-20 of 60 (atss_fraction 0.333), then TAL'
        """
        n = self.warmup_epochs(epochs)
        source = (
            f"atss_epochs {self.atss_epochs}"
            if self.atss_epochs is not None
            else (f"atss_fraction {self.atss_fraction:.3g}")
        )
        if n == 0:
            return f"TOOD: no ATSS warm-up ({source} of {epochs} epochs), TAL from epoch 1"
        span = "epoch 1" if n == 1 else f"epochs 1-{n}"
        return f"TOOD: ATSS warm-up for {span} of {epochs} ({source}), then TAL"

    @classmethod
    def from_yaml(cls, d: dict[str, Any] | None, args: Any = None) -> TOODHyp:
        """Build the hyper-parameters from the top-level keys of a model YAML dict and the train arguments.

        Args:
            d (dict | None): The model YAML as a dict (``model.yaml``); None or {} gives the defaults. Other keys are
                ignored.
            args (SimpleNamespace | dict | None): The train arguments (``trainer.args``, ``model.args``); a TOOD key
                whose value is not None overrides the YAML's (see ``train_overrides``).

        Returns:
            (TOODHyp): The validated hyper-parameters.

        Raises:
            ValueError: If a value has the wrong type or range (one line naming the key).

        Examples:
            >>> TOODHyp.from_yaml({"atss_epochs": 0}).atss_epochs
            0
            >>> TOODHyp.from_yaml({"tal_topk": 9}, {"tal_topk": 5, "tal_beta": None}).tal_topk
            5
        """
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ValueError(f"TOOD: the model YAML must be a dict, got {type(d).__name__}")
        return cls(**{**{f.name: d[f.name] for f in fields(cls) if f.name in d}, **train_overrides(args)})


@functools.cache
def hyp_schema() -> tuple[HypKey, ...]:
    """Return the TOOD hyper-parameters (names, types, defaults, bounds, help) in ``TOODHyp`` field order.

    The one schema: the YAML validation, the docs/tal.md table test and ``yolo-tood compare``'s variants derive from it.

    Examples:
        >>> [k.name for k in hyp_schema()][:3]
        ['tal_topk', 'tal_alpha', 'tal_beta']
    """
    types = get_type_hints(TOODHyp)
    return tuple(
        HypKey(
            f.name,
            _base_type(types[f.name]),
            f.default,
            f.metadata["minimum"],
            f.metadata["maximum"],
            f.metadata["help"],
            f.metadata["choices"],
            f.metadata["optional"],
            f.metadata["below_maximum"],
        )
        for f in fields(TOODHyp)
    )


def train_overrides(args: Any) -> dict[str, Any]:
    """Return the TOOD keys set in the train arguments (not None), each validated alone by the schema.

    None, the default ultralytics' cfg gets from ``add_train_args``, means "the model YAML's value", so an absent and
    a None key are the same.

    Args:
        args (SimpleNamespace | dict | None): Train arguments (``trainer.args``; a dict after ``load_checkpoint``).

    Returns:
        (dict): ``{key: value}`` of the TOOD keys with a value, in schema order.

    Raises:
        ValueError: If a value has the wrong type or range (the schema's line, naming the key).

    Examples:
        >>> train_overrides({"tal_topk": 9, "atss_epochs": None, "lr0": 0.01})
        {'tal_topk': 9}
    """
    if args is None:
        return {}
    return {k.name: k.check(v) for k in hyp_schema() if (v := train_arg(args, k.name)) is not None}


def train_arg(args: Any, name: str) -> Any:
    """Return train argument ``name`` of ``args`` (a namespace, or a dict after ``load_checkpoint``), None if absent."""
    return args.get(name) if isinstance(args, dict) else getattr(args, name, None)


def _base_type(hint: Any) -> type:
    """``int`` for ``Optional[int]``, else the hint itself."""
    args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
    return args[0] if args else hint


def check_warmup(hyp: TOODHyp, epochs: int) -> bool:
    """Warn when the resolved ATSS warm-up is as long as or longer than the whole training, so TAL would never run.

    An explicit ``atss_epochs`` shorter than a third of the training (the paper's proportion, the -tood configs'
    ``atss_fraction``) is logged as information.

    Args:
        hyp (TOODHyp): The TOOD hyper-parameters.
        epochs (int): Number of training epochs.

    Returns:
        (bool): True if the warm-up is shorter than the training (TAL will be used), False if a warning was emitted.

    Examples:
        >>> check_warmup(TOODHyp(), epochs=100)
        True
    """
    # Imported here, not at the top: the start-up hook reads hyp_schema() while ultralytics.utils is being imported
    from ultralytics.utils import LOGGER

    warmup = hyp.warmup_epochs(epochs)
    if warmup >= epochs:
        key = "atss_epochs" if hyp.atss_epochs is not None else "atss_fraction"
        value = hyp.atss_epochs if hyp.atss_epochs is not None else f"{hyp.atss_fraction:.3g}"
        LOGGER.warning(
            f"TOOD: {key}={value} gives an ATSS warm-up of {warmup} epochs >= epochs={epochs}, so the whole training "
            f"uses the ATSS warm-up (Focal loss) and Task Alignment Learning never starts; lower '{key}' (train "
            "argument or model YAML)."
        )
        return False
    if hyp.atss_epochs is not None and 0 < 3 * warmup < epochs:
        LOGGER.info(
            f"TOOD: atss_epochs={warmup} is an ATSS warm-up of {warmup} of {epochs} epochs, shorter than the paper's "
            "third of its schedule (4 of 12), which atss_fraction=0.333 gives when 'atss_epochs' is unset (docs/tal.md)"
        )
    return True
