"""Every ultralytics internal named in yolo_tood.integration.compat still exists with the expected signature.

When this fails after an ultralytics upgrade, the message names the internal and the yolo-tood module to adapt.
"""

from __future__ import annotations

import inspect

import pytest

import yolo_tood  # noqa: F401  registers, so the wrapped functions are checked through their originals
from yolo_tood.integration.compat import RELIED_ON, resolve


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
