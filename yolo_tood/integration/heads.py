"""The head table: which head classes are TOOD heads, how their YAML rows are built, which criterion they get.

Registration, the loss selection, the training callbacks, export and safe loading all read this table, so a later
TOOD head (another task, another model family) is one ``HeadSpec`` entry. Classes are named by import path and only
imported when used, so reading the table imports neither torch nor ultralytics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .compat import resolve

__all__ = ("ARG_CHOICES", "HEADS", "HeadSpec", "head_classes", "head_spec", "is_tood_head", "tood_row_spec")

# The values a head's str argument accepts: the heads' own tuples (which their check_args use), by import path so
# that reading the table imports nothing; an argument means the same in every head that has it
ARG_CHOICES = {
    "norm": "yolo_tood.nn.decomposition:HEAD_NORMS",
    "tap": "yolo_tood.nn.tap:TAP_MODES",
    "adapter": "yolo_tood.nn.tood_head:ADAPTERS",
    "interact": "yolo_tood.nn.tap_head:INTERACT_MODES",
    "quality": "yolo_tood.nn.quality:QUALITY_MODES",
}


@dataclass(frozen=True)
class HeadSpec:
    """One TOOD head.

    Attributes:
        name (str): Class name, as written in the model YAML's module column.
        module (str): Module defining the class (and its sub-modules, allowed for ``ULTRALYTICS_SAFE_LOAD``).
        stands_for (str): The ultralytics head whose ``parse_model`` branch builds it (appends reg_max, end2end, ch).
        criterion (str): ``module:name`` of the loss a model with this head gets from ``init_criterion``.
        yaml_args (tuple[str, ...]): Names of the head's arguments after ``nc`` in the YAML row, in order; a row that
            omits one gets the constructor's default (``arg_defaults``). With ``scaled`` the first (a width) is scaled
            like conv widths and the second (a depth) like repeats; the others are passed as written (a str one takes
            the values of ``ARG_CHOICES``). A value's type is its default's. The one list of these names: registration
            and the tools (``yolo-tood compare``'s variants) read it.
        scaled (bool): Whether the first two ``yaml_args`` are a width and a depth that the model scale multiplies
            (TOODDetect's tower); a head without its own tower (TAPDetect) has none.
    """

    name: str
    module: str
    stands_for: str
    criterion: str
    yaml_args: tuple[str, ...]
    scaled: bool = True

    @property
    def cls(self) -> type:
        """The head class (imports its module)."""
        return resolve(f"{self.module}:{self.name}")

    def arg_defaults(self) -> dict[str, Any]:
        """The defaults of ``yaml_args``, read from the head constructor's signature (imports the head)."""
        import inspect

        parameters = inspect.signature(self.cls.__init__).parameters
        return {name: parameters[name].default for name in self.yaml_args}

    def arg_choices(self) -> dict[str, tuple[str, ...]]:
        """The values each of the head's str ``yaml_args`` accepts (``ARG_CHOICES``; imports the heads' modules)."""
        return {name: tuple(resolve(ARG_CHOICES[name])) for name in self.yaml_args if name in ARG_CHOICES}

    def check_args(self, args: list, reg_max: int) -> None:
        """Run the head class's own argument checks on a YAML row's ``[nc, *yaml_args]``; builds nothing.

        The class's static ``check_args(*yaml_args, reg_max)`` holds the checks its constructor runs (``nc`` aside,
        which the trainer replaces with the dataset's), so a bad row fails before any model or run folder exists.

        Args:
            args (list): The row's arguments, complete and scaled (as ``parse_model`` would pass them).
            reg_max (int): The model YAML's ``reg_max``, which ``parse_model`` passes to the head.

        Raises:
            ValueError: One line naming the argument, its value and what is allowed.
        """
        self.cls.check_args(*args[1:], reg_max)

    def criterion_for(self, model: Any) -> Any:
        """Return the criterion of ``model`` (a de-paralleled DetectionModel whose last module is this head).

        An end-to-end head (a ``one2one_cv2``, as ultralytics' own test in ``DetectionModel.init_criterion``) gets
        ultralytics' ``E2ELoss`` with this criterion as its ``loss_fn``, one per branch.
        """
        criterion = resolve(self.criterion)
        if getattr(model.model[-1], "one2one_cv2", None) is not None:
            from ultralytics.utils.loss import E2ELoss

            return E2ELoss(model, criterion)
        return criterion(model)


HEADS: tuple[HeadSpec, ...] = (
    HeadSpec(
        name="TOODDetect",
        module="yolo_tood.nn.head",
        stands_for="Detect",
        criterion="yolo_tood.train.loss:TOODLoss",
        # the defaults are TOODDetect's: MMDetection's TOOD head (256 channels, 6 stacked convs, GroupNorm shared over
        # the levels, TAP); the per-level 1x1 adapter is this head's (YOLOv8's neck levels differ in width)
        yaml_args=("feat_channels", "stacked_convs", "norm", "tap", "adapter", "quality"),
    ),
    HeadSpec(
        name="TAPDetect",
        module="yolo_tood.nn.tap_head",
        stands_for="Detect",
        criterion="yolo_tood.train.loss:TOODLoss",
        # the stock Detect branches (cv2, cv3, dfl) under their stock names, plus TOOD's task-aligned predictor;
        # interact: box_to_cls, a 1x1 conv per level from the box branch's feature into the cls branch's (opt-in);
        # quality: what M reads (features, distribution: GFLv2's DGQP, or both)
        yaml_args=("tap", "interact", "quality"),
        scaled=False,
    ),
)

_BY_NAME = {spec.name: spec for spec in HEADS}


def head_spec(name: Any) -> HeadSpec | None:
    """Return the spec of a YAML module name, or None when it is not a TOOD head."""
    return _BY_NAME.get(name) if isinstance(name, str) else None


def tood_row_spec(row: Any) -> HeadSpec | None:
    """Return the spec of a model-YAML row ``[from, repeats, module, args]`` naming a TOOD head, else None."""
    return head_spec(row[2]) if isinstance(row, (list, tuple)) and len(row) == 4 else None


def head_classes() -> tuple[type, ...]:
    """Return the TOOD head classes (imports their modules)."""
    return tuple(spec.cls for spec in HEADS)


def is_tood_head(module: Any) -> HeadSpec | None:
    """Return the spec of ``module``'s class when it is a TOOD head instance, else None (imports nothing new)."""
    import sys

    for spec in HEADS:
        mod = sys.modules.get(spec.module)
        cls = getattr(mod, spec.name, None) if mod is not None else None
        if cls is not None and isinstance(module, cls):
            return spec
    return None
