"""Every ultralytics internal named in yolo_tood.integration.compat (the plug-in's) and yolo_tood.tools.compat (the
tools') still exists with the expected signature.

When this fails after an ultralytics upgrade, the message names the internal and the yolo-tood module to adapt.
"""

from __future__ import annotations

import inspect

import pytest

import yolo_tood  # noqa: F401  registers, so the wrapped functions are checked through their originals
from yolo_tood.integration import compat as plugin_compat
from yolo_tood.integration.compat import resolve
from yolo_tood.tools import compat as tools_compat

RELIED_ON = (*plugin_compat.RELIED_ON, *tools_compat.RELIED_ON)


def original(obj):
    """Return the ultralytics function under a yolo-tood wrapper, or ``obj``."""
    return getattr(obj, "_yolo_tood_original", obj)


@pytest.mark.parametrize("internal", RELIED_ON, ids=[i.target for i in RELIED_ON])
def test_relied_on_internal_is_unchanged(internal):
    where = f"ultralytics internal {internal.target} (relied on by yolo_tood/{internal.used_by or '?'})"
    try:
        obj = original(resolve(internal.target))
    except (ImportError, AttributeError) as e:
        pytest.fail(f"{where} is gone: {e}")
    if internal.params is not None:
        params = tuple(inspect.signature(obj).parameters)
        assert params == internal.params, f"{where} changed signature: expected {internal.params}, got {params}"
    missing = [a for a in internal.attrs if not hasattr(obj, a)]
    assert not missing, f"{where} lost {missing}"


def test_each_house_lists_its_own_internals():
    """The plug-in's list names only plug-in modules and the tools' only tools modules, so each house's compat file
    is the one place to look when ultralytics moves what that house relies on."""
    plugin = [i.used_by for i in plugin_compat.RELIED_ON if not i.used_by.startswith(("nn/", "train/", "integration/"))]
    tools = [i.used_by for i in tools_compat.RELIED_ON if not i.used_by.startswith("tools/")]
    assert not plugin and not tools, (plugin, tools)


def test_match_predictions_is_ultralytics_one_to_one_matching():
    """Two detections of one GT at IoU 0.9 and 0.8 (in descending score): only the first matches; the class must
    agree; IoU must reach the threshold."""
    import torch

    iou = torch.tensor([[0.9, 0.8, 0.4]])  # (G, N)
    matched = tools_compat.match_predictions(torch.tensor([0.0, 0.0, 0.0]), torch.tensor([0.0]), iou, 0.5)
    assert matched.shape == (3, 1) and matched[:, 0].tolist() == [True, False, False]
    other_class = tools_compat.match_predictions(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0]), iou, 0.5)
    assert other_class[:, 0].tolist() == [False, True, False]
    assert not tools_compat.match_predictions(torch.tensor([0.0]), torch.tensor([0.0]), iou[:, :1], 0.95).any()


def test_parse_model_builds_heads_from_the_global_detect():
    """parse_model_with relies on parse_model reading `Detect` and resolving rows through its module globals."""
    import ultralytics.nn.tasks as tasks

    code = original(tasks.parse_model).__code__
    assert {"Detect", "globals"} <= set(code.co_names), "ultralytics parse_model no longer reads global Detect"
    assert not code.co_freevars, "ultralytics parse_model became a closure; parse_model_with cannot rebind it"


def test_every_wrapped_function_is_listed():
    """What register() wraps is a subset of RELIED_ON, so the list cannot fall behind the wrappers."""
    from yolo_tood.integration import register

    listed = {i.target for i in RELIED_ON}
    wrapped = {f"{p.owner.__module__ if isinstance(p.owner, type) else p.owner.__name__}:"
               f"{p.owner.__qualname__ + '.' if isinstance(p.owner, type) else ''}{p.name}"
               for p in register._PATCHES}  # fmt: skip
    assert wrapped and wrapped <= listed, sorted(wrapped - listed)


def test_train_arguments_are_checked_against_the_shared_default_cfg():
    """add_train_args extends DEFAULT_CFG_DICT in place: the CLI and get_cfg must read that very dict when called."""
    import ultralytics.cfg as cfg
    import ultralytics.utils as ul

    assert cfg.DEFAULT_CFG_DICT is ul.DEFAULT_CFG_DICT and cfg.DEFAULT_CFG is ul.DEFAULT_CFG
    assert {"DEFAULT_CFG_DICT", "check_dict_alignment"} <= set(cfg.entrypoint.__code__.co_names)
    assert inspect.signature(cfg.get_cfg).parameters["cfg"].default is ul.DEFAULT_CFG_DICT
    from ultralytics.engine.trainer import BaseTrainer

    assert inspect.signature(BaseTrainer.__init__).parameters["cfg"].default is ul.DEFAULT_CFG


def test_the_wrapped_check_cfg_runs_before_the_run_folder_is_made():
    """get_cfg calls check_cfg by its module-global name; BaseTrainer.__init__ calls get_cfg before get_save_dir."""
    import ultralytics.cfg as cfg
    from ultralytics.engine.trainer import BaseTrainer

    assert "check_cfg" in original(cfg.get_cfg).__code__.co_names
    assert cfg.check_cfg is not original(cfg.check_cfg), "yolo-tood's check_cfg wrapper is not installed"
    source = inspect.getsource(BaseTrainer.__init__)
    assert -1 < source.find("get_cfg(cfg, overrides)") < source.find("get_save_dir(") < source.find(".mkdir(")


def test_parse_model_reg_max_default():
    """compat.PARSE_MODEL_REG_MAX is the reg_max parse_model gives a head when the model YAML has none."""
    import ultralytics.nn.tasks as tasks

    from yolo_tood.integration.compat import PARSE_MODEL_REG_MAX

    assert f'd.get("reg_max", {PARSE_MODEL_REG_MAX})' in inspect.getsource(original(tasks.parse_model))
