"""Registration with ultralytics: parse_model builds every scale, loss selection, bad input, and the lazy hook."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel, guess_model_scale, guess_model_task, yaml_model_load
from ultralytics.utils.torch_utils import get_flops, get_num_params

import yolo_tood  # noqa: F401  (installed .pth imports it too; explicit for runs from a source tree)
from yolo_tood.integration.heads import HEADS
from yolo_tood.integration.register import check_ultralytics_version
from yolo_tood.nn.head import TOODDetect

ROOT = Path(__file__).resolve().parents[1]
TOOD_YAML = ROOT / "cfg" / "yolov8-tood.yaml"
STOCK_YAML = Path(__import__("ultralytics").__file__).parent / "cfg" / "models" / "v8" / "yolov8.yaml"
EXPECTED_HEAD = {"n": (64, 2), "s": (128, 2), "m": (192, 2), "l": (256, 3), "x": (320, 3)}


def load_cfg(path: Path, scale: str, **overrides) -> dict:
    d = yaml.safe_load(path.read_text())
    return {**d, "scale": scale, **overrides}


@pytest.mark.parametrize("scale", list("nsmlx"))
def test_parse_model_builds_every_scale_within_budget(scale):
    """Ultralytics' own DetectionModel builds the TOOD YAML with width-scaled channels, as it builds Detect."""
    model = DetectionModel(load_cfg(TOOD_YAML, scale, nc=3), verbose=False)
    stock = DetectionModel(load_cfg(STOCK_YAML, scale, nc=3), verbose=False)
    head, stock_head = model.model[-1], stock.model[-1]
    assert isinstance(head, TOODDetect)
    assert [a.in_channels for a in head.adapters] == [s[0].conv.in_channels for s in stock_head.cv2]
    assert (head.feat_channels, head.stacked_convs) == EXPECTED_HEAD[scale]
    assert head.stride.tolist() == [8.0, 16.0, 32.0]  # ultralytics' stride computation ran on our feats
    params, stock_params = get_num_params(model), get_num_params(stock)
    flops, stock_flops = get_flops(model, 640), get_flops(stock, 640)
    assert flops > 0
    assert params <= 1.10 * stock_params and flops <= 1.15 * stock_flops, (params / stock_params, flops / stock_flops)

    x = torch.zeros(1, 3, 64, 64)
    out = model.train()(x)
    assert out["boxes"].shape == (1, 64, 84) and out["scores"].shape == (1, 3, 84)
    y, _ = model.eval()(x)
    assert y.shape == (1, 7, 84)


def test_yaml_name_resolution_like_ultralytics():
    """yolov8n-tood.yaml maps to yolov8-tood.yaml with scale n, and the task is inferred as detect."""
    d = yaml_model_load(ROOT / "cfg" / "yolov8n-tood.yaml")
    assert d["scale"] == "n" and Path(d["yaml_file"]).name == "yolov8n-tood.yaml"
    assert guess_model_scale("cfg/yolov8s-tood.yaml") == "s"
    assert guess_model_task(d) == "detect"


@pytest.mark.parametrize("scale", ["n", "s"])
def test_scaled_name_resolves_under_a_directory_that_looks_scaled(tmp_path, scale):
    """Ultralytics rewrites the first digit+n/s/m/l/x of the whole path; '/run1s/' must not break a TOOD YAML."""
    from ultralytics import YOLO

    folder = tmp_path / "run1s" / "exp2m"
    folder.mkdir(parents=True)
    (folder / "yolov8-tood.yaml").write_text(TOOD_YAML.read_text())
    d = yaml_model_load(folder / f"yolov8{scale}-tood.yaml")
    assert d["scale"] == scale and d["yaml_file"] == str(folder / f"yolov8{scale}-tood.yaml")
    head = YOLO(str(folder / f"yolov8{scale}-tood.yaml")).model.model[-1]  # engine.model's own import of the loader
    assert (head.feat_channels, head.stacked_convs) == EXPECTED_HEAD[scale]
    (folder / "yolov8.yaml").write_text(STOCK_YAML.read_text())
    with pytest.raises(FileNotFoundError):  # stock YAMLs keep ultralytics' behaviour, bug included
        yaml_model_load(folder / "yolov8n.yaml")


def test_model_yaml_is_not_mutated_and_loss_is_tood():
    from yolo_tood.train.loss import TOODLoss

    cfg = load_cfg(TOOD_YAML, "n", nc=3)
    snapshot = copy.deepcopy(cfg)
    model = DetectionModel(cfg, verbose=False)
    assert model.yaml["head"] == snapshot["head"]  # the stored YAML keeps the unscaled row, so rebuilds agree
    model.args = get_cfg()
    assert isinstance(model.init_criterion(), TOODLoss)
    stock = DetectionModel(load_cfg(STOCK_YAML, "n", nc=3), verbose=False)
    stock.args = model.args
    assert type(stock.init_criterion()).__name__ == "v8DetectionLoss"  # stock models are untouched


BAD_HEAD_ROWS = [
    (["nc", 256, 0], "stacked_convs"),
    (["nc", "wide", 3], "feat_channels"),
    (
        ["nc", 256, 3, "gn", "faithful", "linear", "features", 9],
        r"\[nc, feat_channels, stacked_convs, norm, tap, adapter, quality\]",
    ),
    (["nc", 256, 3, "gn", "off"], "tap must be one of faithful, none"),
    (["nc", 256, 3, "gn", "faithful", "deep"], "adapter must be one of linear, conv"),
    (["nc", 256, 3, "bn"], "norm must be one of gn, gn8, sepbn"),
    (["nc", 256, 3, "gn", "faithful", "linear", "best"], "quality must be one of features, distribution, both"),
]


@pytest.mark.parametrize("args, match", BAD_HEAD_ROWS)
def test_bad_head_row_gives_clear_error(args, match):
    cfg = load_cfg(TOOD_YAML, "n", nc=3)
    cfg["head"][-1] = [[15, 18, 21], 1, "TOODDetect", args]
    with pytest.raises(ValueError, match=match):
        DetectionModel(cfg, verbose=False)


@pytest.mark.parametrize("spec", HEADS, ids=[spec.name for spec in HEADS])
def test_the_head_table_names_every_str_head_argument_with_its_values(spec):
    """ARG_CHOICES holds the values the heads' own checks accept, for every str argument of the table (the tools'
    variants read them): each default is one of them, and the head refuses anything else."""
    defaults, choices = spec.arg_defaults(), spec.arg_choices()
    assert set(choices) == {name for name, value in defaults.items() if isinstance(value, str)}
    args = [3, *defaults.values()]
    spec.check_args(args, reg_max=16)  # the defaults pass
    for name, values in choices.items():
        assert defaults[name] in values and all(isinstance(v, str) for v in values), name
        bad = [3, *(value if key != name else "bogus" for key, value in defaults.items())]
        with pytest.raises(ValueError, match=f"{name} must be one of {', '.join(values)}, got 'bogus'"):
            spec.check_args(bad, reg_max=16)


def test_the_train_cfg_check_refuses_a_bad_head_row_as_the_model_build_does(tmp_path):
    """check_tood_cfg (run in ultralytics' check_cfg, before the run folder) gives the head's own line, building
    nothing; a good row passes."""
    from yolo_tood.integration.register import check_tood_cfg

    for row, match in [*BAD_HEAD_ROWS, (["nc", 64, 2, "gn8"], None)]:
        cfg = load_cfg(TOOD_YAML, "n", nc=3)
        cfg["head"][-1] = [[15, 18, 21], 1, "TOODDetect", row]
        path = tmp_path / "head.yaml"
        path.write_text(yaml.safe_dump(cfg))
        train = {"mode": "train", "model": str(path)}
        if match is None:
            check_tood_cfg(train)
            continue
        with pytest.raises(ValueError, match=match):
            check_tood_cfg(train)


def test_conv_adapters_fold_with_the_models_fuse():
    """adapter='conv' adapters are ultralytics Convs, so DetectionModel.fuse() (run before every export) folds their
    BatchNorms into the convs, with the same outputs."""
    torch.manual_seed(0)
    cfg = load_cfg(TOOD_YAML, "n", nc=3)
    cfg["head"][-1] = [[15, 18, 21], 1, "TOODDetect", ["nc", 256, 3, "gn", "faithful", "conv"]]
    model = DetectionModel(cfg, verbose=False).eval()
    adapters = model.model[-1].adapters
    with torch.no_grad():
        for a in adapters:  # non-trivial BatchNorms to fold
            a.bn.running_mean.uniform_(-0.5, 0.5)
            a.bn.running_var.uniform_(0.5, 2.0)
        x = torch.rand(1, 3, 64, 64)
        y = model(x)[0]
        model.fuse(verbose=False)
        assert not any(hasattr(a, "bn") for a in adapters)
        torch.testing.assert_close(model(x)[0], y, atol=1e-5, rtol=1e-4)


def test_mixing_stock_detect_is_rejected():
    cfg = load_cfg(TOOD_YAML, "n", nc=3)
    cfg["head"].insert(-1, [[15, 18, 21], 1, "Detect", ["nc"]])
    with pytest.raises(ValueError, match="cannot also contain"):
        DetectionModel(cfg, verbose=False)


def test_unsupported_ultralytics_version_is_one_clear_line():
    check_ultralytics_version()  # the installed version is supported
    with pytest.raises(RuntimeError, match=r"supports ultralytics>=8\.4\.190,<8\.5 but ultralytics 8\.3\.0") as e:
        check_ultralytics_version("8.3.0")
    assert "\n" not in str(e.value)


def run_python(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout


def test_startup_hook_is_installed_and_lazy():
    """The installed yolo_tood.pth imports yolo_tood at start-up without importing torch or ultralytics."""
    out = run_python("import sys; print(*(m in sys.modules for m in ('yolo_tood', 'torch', 'ultralytics')))")
    assert out.split() == ["True", "False", "False"], "is the package installed (pip install .)? yolo_tood.pth missing"


def test_hook_registers_when_ultralytics_is_imported_without_yolo_tood_import():
    out = run_python(
        "from ultralytics import YOLO; m = YOLO('cfg/yolov8n-tood.yaml', verbose=False); "
        "print(type(m.model.model[-1]).__name__, m.task)"
    )
    assert out.split() == ["TOODDetect", "detect"]
