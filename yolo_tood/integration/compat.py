"""Every ultralytics internal the plug-in relies on, named in one place (the tools keep theirs in tools/compat.py).

yolo-tood never edits ultralytics' files, but it wraps some of its functions, subclasses classes while skipping their
``__init__``, and calls a few private methods. Each of those is an entry of ``RELIED_ON`` below, with the parameters
or attributes it is expected to have and the yolo-tood module that relies on it; ``tests/test_compat.py`` checks every
entry against the installed ultralytics. A new ultralytics release is then a known list of places to check: the test
names the entry that moved, and ``used_by`` names the code to adapt.

The few helpers below are the only code that reaches into those internals from the integration layer (``nn/`` and
``train/`` stay free of ``integration/``; their reliance on ``Detect`` and ``v8DetectionLoss`` is listed here all the
same). ``Internal`` and ``resolve`` serve the tools' list too.
"""

from __future__ import annotations

import re
import types
from dataclasses import dataclass
from importlib import import_module
from typing import Any, Callable

__all__ = (
    "FORCED_OPSET_FORMATS",
    "ONNX_FORMATS",
    "PARSE_MODEL_REG_MAX",
    "RELIED_ON",
    "SCALE_IN_NAME",
    "SUPPORTED_ULTRALYTICS",
    "Internal",
    "check_ultralytics_version",
    "parse_model_with",
    "resolve",
)

SUPPORTED_ULTRALYTICS = ">=8.4.190,<8.5"  # pyproject.toml's ultralytics pin must match

# parse_model's reg_max when the model YAML has none (its `d.get("reg_max", 16)`), passed to every Detect-like head
PARSE_MODEL_REG_MAX = 16

# ultralytics' yaml_model_load rewrite of a scaled name, yolov8n-x -> yolov8-x (it applies it to the whole path)
SCALE_IN_NAME = re.compile(r"(\d+)([nslmx])(.+)?$")

# Formats that ultralytics 8.4.190's Exporter builds from an ONNX export (export_onnx() runs first); for those that
# pin their own opset when none is given, the value they pin. The others use the exporter's best opset (>= 17).
ONNX_FORMATS = {
    "onnx": None,
    "engine": None,
    "saved_model": None,
    "pb": None,
    "edgetpu": None,
    "mnn": None,
    "rknn": 19,
    "ascend": 17,
    "deepx": None,
    "qnn": None,
    "xilinx": 17,
    "hailo": 11,  # forced, whatever opset is requested
}
FORCED_OPSET_FORMATS = frozenset({"hailo"})  # those of ONNX_FORMATS that pin their opset whatever is requested


@dataclass(frozen=True)
class Internal:
    """One ultralytics internal yolo-tood relies on.

    Attributes:
        target (str): ``module:qualname``, e.g. ``ultralytics.nn.tasks:parse_model``.
        params (tuple[str, ...] | None): The expected parameter names of a callable (``self`` included for methods),
            or None when only its presence matters.
        attrs (tuple[str, ...]): Names the object must have (attributes, methods, or global names its code reads).
        used_by (str): The yolo-tood module that relies on it.
        why (str): What yolo-tood does with it.
    """

    target: str
    params: tuple[str, ...] | None = None
    attrs: tuple[str, ...] = ()
    used_by: str = ""
    why: str = ""


RELIED_ON: tuple[Internal, ...] = (
    # integration/register.py
    Internal(
        "ultralytics.nn.tasks:parse_model",
        ("d", "ch", "verbose"),
        ("__code__",),
        "integration/register.py",
        "wrapped; run with a private globals copy where `Detect` is the TOOD head, because its channel-injecting "
        "branch is a frozenset of global class names built inside the function (`globals()[name]` resolves YAML rows)",
    ),
    Internal(
        "ultralytics.nn.tasks:yaml_model_load",
        ("path",),
        (),
        "integration/register.py",
        "wrapped for TOOD names: resolves bare names to yolo_tood/cfg; applies SCALE_IN_NAME to the whole path, the "
        "wrapper applies it to the file name only",
    ),
    Internal(
        "ultralytics.utils.checks:check_yaml",
        ("file", "suffix", "hard"),
        (),
        "integration/register.py",
        "ultralytics' yaml_model_load finds a name in the working directory, then under its own package; the "
        "wrapper keeps that order for TOOD names, with yolo_tood/cfg in place of the package search",
    ),
    Internal(
        "ultralytics.utils:DEFAULT_CFG_DICT",
        None,
        (),
        "integration/register.py",
        "the TOOD keys are added (value None) right after ultralytics.utils executes; entrypoint and get_cfg check "
        "train arguments against it when called, the trainer saves every key in args.yaml, load_checkpoint merges "
        "a checkpoint's train_args over it",
    ),
    Internal(
        "ultralytics.utils:DEFAULT_CFG",
        None,
        (),
        "integration/register.py",
        "the namespace BaseTrainer(cfg=DEFAULT_CFG) starts from; the TOOD keys are set on it as attributes",
    ),
    Internal(
        "ultralytics.cfg:entrypoint",
        None,
        ("__code__",),
        "integration/register.py",
        "the `yolo` command: reads DEFAULT_CFG_DICT and calls check_dict_alignment at call time, after the hook ran",
    ),
    Internal(
        "ultralytics.cfg:get_cfg",
        ("cfg", "overrides"),
        (),
        "integration/register.py",
        "calls check_cfg through its module-global name on every merged cfg; BaseTrainer.__init__ calls get_cfg "
        "before get_save_dir, so the wrapped check_cfg runs before the run folder is made",
    ),
    Internal(
        "ultralytics.cfg:check_cfg",
        ("cfg", "hard"),
        (),
        "integration/register.py",
        "wrapped: after ultralytics' own type and range checks, check_tood_cfg checks the TOOD train arguments and a "
        "TOOD model YAML's keys and head row, raising one ValueError line as check_cfg does for a bad value",
    ),
    Internal(
        "ultralytics.engine.trainer:BaseTrainer.__init__",
        ("self", "cfg", "overrides", "_callbacks"),
        ("__code__",),
        "integration/register.py",
        "self.args = get_cfg(cfg, overrides) comes before get_save_dir(self.args) and the weights/ mkdir",
    ),
    Internal(
        "ultralytics.cfg:check_dict_alignment",
        ("base", "custom", "e", "allowed_custom_keys"),
        (),
        "integration/register.py",
    ),
    Internal(
        "ultralytics.models.yolo.detect:DetectionTrainer.set_model_attributes",
        ("self",),
        (),
        "train/loss.py",
        "sets model.args = trainer.args (copied into the EMA model), where TOODLoss reads the TOOD train arguments "
        "as v8DetectionLoss reads box/cls/dfl",
    ),
    Internal("ultralytics.nn.tasks:guess_model_scale", ("model_path",), (), "integration/register.py"),
    Internal("ultralytics.engine.model:yaml_model_load", None, (), "integration/register.py", "its own imported name"),
    Internal(
        "ultralytics.nn.tasks:DetectionModel.init_criterion",
        ("self",),
        (),
        "integration/register.py",
        "wrapped; returns the TOOD criterion for a TOOD head; the train-start callback calls it when the trainer has "
        "not created `model.criterion` yet, as BaseTrainer's resume does",
    ),
    Internal(
        "ultralytics.utils.callbacks.base:default_callbacks",
        None,
        (),
        "integration/register.py",
        "dict of event -> list, copied into every trainer/exporter; on_pretrain_routine_start, on_train_start, "
        "on_train_epoch_start, on_train_epoch_end (runs before the epoch's validation) and on_export_start are "
        "appended",
    ),
    Internal("ultralytics.utils.torch_utils:unwrap_model", ("m",), (), "integration/callbacks.py"),
    Internal("ultralytics.utils.ops:make_divisible", ("x", "divisor"), (), "integration/register.py"),
    Internal("ultralytics.utils.checks:check_version", None, (), "integration/compat.py"),
    Internal(
        "ultralytics.cfg:DEFAULT_CFG_DICT",
        None,
        (),
        "integration/callbacks.py",
        "train-argument defaults (box, cls, dfl, cls_pw) compared at train start; the TOOD keys are read from "
        "trainer.args",
    ),
    Internal(
        "ultralytics.engine.trainer:BaseTrainer",
        None,
        ("_setup_train", "save_model", "add_callback", "on_plot"),
        "integration/callbacks.py",
        "callbacks read the instance attributes model, ema.ema, args (plots), epoch, start_epoch, epochs and save_dir; "
        "on_train_start adds on_train_end to the instance's callbacks (it draws tal_stats.png, run on rank 0 after "
        "plot_metrics) and passes the picture to on_plot",
    ),
    # integration/export.py
    Internal(
        "ultralytics.engine.exporter:Exporter",
        None,
        ("__call__",),
        "integration/export.py",
        "runs on_export_start after fusing the model into `exporter.model`, before export_*; ONNX_FORMATS lists "
        "the formats it builds from ONNX",
    ),
    # nn/tood_head.py, nn/tap_head.py: both heads subclass Detect and call Detect.__init__; nn/inference.py decodes
    Internal(
        "ultralytics.nn.modules:Detect",
        None,
        (
            "forward",
            "forward_head",
            "_inference",
            "_get_decode_boxes",
            "bias_init",
            "legacy",
            "dynamic",
            "export",
            "one2many",
            "one2one",
            "end2end",
            "postprocess",
            "decode_bboxes",
            "shape",
            "anchors",
            "strides",
        ),
        "nn/tood_head.py",
        "Detect.__init__ sets nc, nl, reg_max, no, stride; TOODDetect then replaces cv2 by an empty ModuleList and "
        "cv3 by None (Detect.one2many, end2end and DetectionModel.load read them) and dfl by DFLExpectation; "
        "TaskAlignedOutputs._get_decode_boxes decodes TAP's distances with decode_bboxes and keeps Detect's anchor "
        "cache (shape, anchors, strides, refreshed when dynamic)",
    ),
    Internal(
        "ultralytics.nn.modules:Detect.__init__",
        ("self", "nc", "reg_max", "end2end", "ch"),
        (),
        "nn/tood_head.py",
        "called positionally (nc, reg_max, end2end, ch) by both heads",
    ),
    Internal(
        "ultralytics.nn.modules:Detect.forward_head", ("self", "x", "box_head", "cls_head"), (), "nn/inference.py"
    ),
    Internal("ultralytics.nn.modules:Detect._inference", ("self", "x"), (), "nn/inference.py"),
    Internal("ultralytics.nn.modules:DFL.__init__", ("self", "c1"), (), "nn/tap.py", "DFLExpectation subclasses it"),
    Internal(
        "ultralytics.nn.modules:Conv.__init__",
        ("self", "c1", "c2", "k", "s", "p", "g", "d", "act"),
        (),
        "nn/tood_head.py",
        "adapter='conv' builds Conv(c1, c2, 3): conv + bn + act, which DetectionModel.fuse() folds for export",
    ),
    # nn/tap_head.py: TAPDetect subclasses Detect and keeps its branches
    Internal(
        "ultralytics.nn.modules:Detect.__init__",
        ("self", "nc", "reg_max", "end2end", "ch"),
        (),
        "nn/tap_head.py",
        "called: builds the stock cv2 / cv3 / dfl that TAPDetect keeps under their names; cv2[i][:-1] and cv3[i][:-1] "
        "are run separately from their last conv, so each branch must stay an nn.Sequential ending in the predictor",
    ),
    Internal(
        "ultralytics.nn.modules:Detect.forward",
        ("self", "x"),
        (),
        "nn/tap_head.py",
        "end-to-end heads (YOLO26): forward_head(x, **self.one2many), then forward_head(detached x, **self.one2one) "
        "when one2one_cv2 exists; TAPDetect's one2many / one2one add its predictors to the branch dict (as YOLOE's "
        "contrastive_head)",
    ),
    Internal(
        "ultralytics.nn.modules:Detect.fuse",
        ("self",),
        (),
        "nn/tap_head.py",
        "sets name[8:] (end2end) or name to None for every child named one2one_*: TAPDetect's one-to-one "
        "predictors carry that prefix",
    ),
    Internal(
        "ultralytics.utils.loss:E2ELoss.__init__",
        ("self", "model", "loss_fn"),
        (),
        "integration/heads.py",
        "the criterion of an end-to-end TOOD head: E2ELoss(model, TOODLoss) calls TOODLoss(model, tal_topk=10) and "
        "TOODLoss(model, tal_topk=7, tal_topk2=1), their parse_output and loss, and reads one2one.hyp.epochs",
    ),
    Internal(
        "ultralytics.utils.loss:E2ELoss.decay",
        ("self", "x"),
        (),
        "train/loss.py",
        "the one-to-many weight's decay reads self.one2one.hyp.epochs: TOODLoss.hyp is the train arguments",
    ),
    Internal(
        "ultralytics.nn.modules:Detect.bias_init",
        ("self",),
        (),
        "nn/tap_head.py",
        "called by TAPDetect.bias_init (stock biases), which then sets M's prior",
    ),
    Internal(
        "ultralytics.nn.tasks:BaseModel.load",
        ("self", "weights", "verbose"),
        (),
        "nn/tap_head.py",
        "rebuilds cv3 at the source checkpoint's width when the class counts differ, then calls head.bias_init(), "
        "where TAPDetect rebuilds its predictor for the new width; then intersect_dicts transfers by name and shape",
    ),
    Internal(
        "ultralytics.utils.torch_utils:intersect_dicts",
        None,
        (),
        "nn/tap_head.py",
        "the name-and-shape transfer TAPDetect's stock names are kept for (tests/test_tap_head.py)",
    ),
    # train/loss.py: TOODLoss subclasses v8DetectionLoss without calling its __init__
    Internal(
        "ultralytics.utils.loss:v8DetectionLoss.__init__",
        ("self", "model", "tal_topk", "tal_topk2"),
        (),
        "train/loss.py",
        "skipped (it needs model.args); device, stride, nc, no, reg_max, use_dfl, proj are set by hand; "
        "class_weights (train argument cls_pw) has no TOOD counterpart and is warned about at train start",
    ),
    Internal(
        "ultralytics.utils.loss:v8DetectionLoss.preprocess",
        ("self", "targets", "batch_size", "scale_tensor"),
        (),
        "train/loss.py",
        "GT padding; reads self.device",
    ),
    Internal(
        "ultralytics.utils.loss:v8DetectionLoss.bbox_decode",
        ("self", "anchor_points", "pred_dist"),
        (),
        "train/loss.py",
        "reads self.use_dfl and self.proj",
    ),
    Internal(
        "ultralytics.utils.loss:v8DetectionLoss.__call__",
        ("self", "preds", "batch"),
        (),
        "train/loss.py",
        "calls self.loss(preds, batch)",
    ),
)


def resolve(target: str) -> Any:
    """Return the object named by ``module:qualname`` (e.g. ``ultralytics.nn.tasks:DetectionModel.init_criterion``)."""
    module, _, qualname = target.partition(":")
    obj = import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def check_ultralytics_version(version: str | None = None) -> None:
    """Raise a one-line RuntimeError when ultralytics is outside the range yolo-tood is tested with.

    Args:
        version (str, optional): Version to check; defaults to the installed ``ultralytics.__version__``.
    """
    import ultralytics
    from ultralytics.utils.checks import check_version

    version = version or ultralytics.__version__
    if not check_version(version, SUPPORTED_ULTRALYTICS):
        raise RuntimeError(
            f"yolo-tood supports ultralytics{SUPPORTED_ULTRALYTICS} but ultralytics {version} is installed; "
            f"run: pip install 'ultralytics{SUPPORTED_ULTRALYTICS}'"
        )


def parse_model_with(parse_model: Callable, names: dict[str, Any]) -> Callable:
    """Return ``parse_model`` running on a private copy of its module globals with ``names`` bound in it.

    Ultralytics' ``parse_model`` resolves YAML module names with ``globals()[name]`` and gives a head its input
    channels only when the class is in a frozenset built inside the function from the global name ``Detect``. Binding
    ``Detect`` to the TOOD head in a copy (never in ``ultralytics.nn.tasks`` itself) builds the head with width-scaled
    channels exactly as ``Detect``, while other threads keep seeing the stock globals.

    Args:
        parse_model (Callable): Ultralytics' own (unwrapped) ``parse_model``.
        names (dict[str, Any]): Globals to bind, e.g. ``{"Detect": TOODDetect, "TOODDetect": TOODDetect}``.

    Returns:
        (Callable): A function with ``parse_model``'s code, defaults and signature.
    """
    fn = types.FunctionType(
        parse_model.__code__, {**parse_model.__globals__, **names}, parse_model.__name__, parse_model.__defaults__
    )
    fn.__kwdefaults__ = parse_model.__kwdefaults__
    return fn
