"""Native feel: bare config names from any directory, and the TOOD keys as train arguments (CLI and Python)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import yaml_model_load
from ultralytics.utils import DEFAULT_CFG, DEFAULT_CFG_DICT

import yolo_tood  # noqa: F401  (installed .pth imports it too; explicit for runs from a source tree)
from yolo_tood.data import make_shapes_dataset
from yolo_tood.integration.register import check_tood_cfg, near_miss, shipped_configs
from yolo_tood.paths import CFG_DIR
from yolo_tood.train.hyp import TOODHyp, hyp_schema, train_overrides

YOLO_CLI = Path(sys.executable).parent / "yolo"
FAMILIES = ("yolov8", "yolo11")
TRAIN = "epochs=1 imgsz=64 batch=8 workers=0 device=cpu plots=False exist_ok=True"


def run(cmd: list[str], cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert (proc.returncode == 0) == ok, (
        f"{cmd} returned {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc


def last_line(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout + proc.stderr).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """A tiny generated dataset (16 train, 8 val images at 64 px)."""
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), train=16, val=8, imgsz=64)


@pytest.fixture
def elsewhere(tmp_path, monkeypatch) -> Path:
    """An empty working directory outside the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# Bare names ---------------------------------------------------------------------------------------------------------


def test_the_package_ships_the_families_with_five_scales():
    names = ["yolo11-tap.yaml", "yolo11-tood.yaml", "yolo26-tap.yaml", "yolo26-tood.yaml", "yolov8-tap.yaml"]
    names += ["yolov8-tood.yaml"]
    assert sorted(f.name for f in CFG_DIR.glob("*.yaml")) == names
    assert shipped_configs() == [
        "yolo11{n,s,m,l,x}-tap.yaml",
        "yolo11{n,s,m,l,x}-tood.yaml",
        "yolo26{n,s,m,l,x}-tap.yaml",
        "yolo26{n,s,m,l,x}-tood.yaml",
        "yolov8{n,s,m,l,x}-tap.yaml",
        "yolov8{n,s,m,l,x}-tood.yaml",
    ]


@pytest.mark.parametrize("kind,head", [("tood", "TOODDetect"), ("tap", "TAPDetect")])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scale", list("nsmlx"))
def test_bare_name_resolves_from_any_directory(elsewhere, family, scale, kind, head):
    d = yaml_model_load(f"{family}{scale}-{kind}.yaml")
    assert d["scale"] == scale and d["yaml_file"] == f"{family}{scale}-{kind}.yaml"  # as ultralytics records stock
    assert d["head"][-1][2] == head
    assert d["backbone"] == yaml.safe_load((CFG_DIR / f"{family}-{kind}.yaml").read_text())["backbone"]


@pytest.mark.parametrize("name", ["yolov8x-tood.yaml", "yolo11n-tood.yaml", "yolov8s-tap.yaml", "yolo11x-tap.yaml"])
def test_yolo_builds_a_bare_name(elsewhere, name):
    from ultralytics import YOLO

    model = YOLO(name)
    head = "TAPDetect" if "-tap" in name else "TOODDetect"
    assert type(model.model.model[-1]).__name__ == head and model.task == "detect"


def test_a_local_file_of_the_same_name_wins(elsewhere):
    d = yaml.safe_load((CFG_DIR / "yolov8-tood.yaml").read_text())
    (elsewhere / "yolov8-tood.yaml").write_text(yaml.safe_dump({**d, "tal_topk": 7}))  # the unscaled file, as stock
    assert yaml_model_load("yolov8s-tood.yaml")["tal_topk"] == 7
    (elsewhere / "yolov8s-tood.yaml").write_text(yaml.safe_dump({**d, "tal_topk": 5}))  # the exact name first
    assert yaml_model_load("yolov8s-tood.yaml")["tal_topk"] == 5
    assert "tal_topk" not in yaml_model_load(
        "yolo11s-tood.yaml"
    )  # other names: still the packaged files (schema defaults)


@pytest.mark.parametrize("name", ["yolov8q-tood.yaml", "yolov8q-tap.yaml", "custom-tood.yaml", "a/my-tap.yml"])
def test_a_wrong_tood_name_is_one_line_naming_it_and_the_shipped_configs(elsewhere, name):
    with pytest.raises(FileNotFoundError) as e:
        yaml_model_load(name)
    msg = str(e.value)
    assert f"'{name}' does not exist" in msg and "\n" not in msg
    assert "yolov8{n,s,m,l,x}-tood.yaml" in msg and "yolo11{n,s,m,l,x}-tood.yaml" in msg
    assert "yolov8{n,s,m,l,x}-tap.yaml" in msg and "yolo11{n,s,m,l,x}-tap.yaml" in msg


@pytest.mark.parametrize(
    "name, guess",
    [
        ("yolov8n-tod.yaml", "yolov8n-tood.yaml"),
        ("yolo11n-tapp.yaml", "yolo11n-tap.yaml"),
        ("yolov8n_tood.yaml", "yolov8n-tood.yaml"),
        ("yolo26s-tod.yaml", "yolo26s-tood.yaml"),
        ("yolov8n-tood.yml", "yolov8n-tood.yaml"),
        ("cfg/yolov8n-tood.yaml", "yolov8n-tood.yaml"),  # a folder that does not exist: the bare name resolves
        ("yolov9-tood.yaml", "yolov8-tood.yaml"),
    ],
)
def test_a_near_miss_name_is_one_line_asking_did_you_mean(elsewhere, name, guess):
    with pytest.raises(FileNotFoundError) as e:
        yaml_model_load(name)
    assert str(e.value) == f"yolo-tood: model config '{name}' does not exist; did you mean {guess}?"


@pytest.mark.parametrize("name", ["yolov8m.yml", "yolov8n-p3.yaml", "yolo11n-cls2.yaml", "yolo26n-pose.yml"])
def test_a_stock_typo_keeps_ultralytics_error(elsewhere, name):
    import ultralytics.nn.tasks as tasks

    with pytest.raises(FileNotFoundError) as expected:
        tasks.yaml_model_load._yolo_tood_original(name)
    with pytest.raises(FileNotFoundError) as e:
        yaml_model_load(name)
    assert str(e.value) == str(expected.value) and "yolo-tood" not in str(e.value)


def test_no_stock_name_is_a_near_miss():
    """Every ultralytics model YAML, with each of its scale letters, is farther than NEAR_MISS_DISTANCE from ours."""
    import re

    import ultralytics

    names = set()
    for f in (Path(ultralytics.__file__).parent / "cfg" / "models").rglob("*.yaml"):
        scales = (yaml.safe_load(f.read_text()) or {}).get("scales") or ()
        names |= {f.name} | {re.sub(r"(\d+)(?=[-.])", rf"\g<1>{s}", f.name, count=1) for s in scales}
    assert len(names) > 100 and [n for n in sorted(names) if near_miss(n)] == []


@pytest.mark.parametrize("name", ["yolov8s.yaml", "yolo11x.yaml", "yolov8q.yaml", "yolov9.yaml"])
def test_stock_names_keep_ultralytics_behaviour(elsewhere, name):
    import ultralytics.nn.tasks as tasks

    original = tasks.yaml_model_load._yolo_tood_original
    try:
        expected = original(name)
    except FileNotFoundError as e:
        with pytest.raises(FileNotFoundError, match=str(e)):
            yaml_model_load(name)
    else:
        assert yaml_model_load(name) == expected


# Train arguments ----------------------------------------------------------------------------------------------------


def test_every_schema_key_is_a_train_argument_defaulting_to_none():
    for key in hyp_schema():
        assert DEFAULT_CFG_DICT[key.name] is None and getattr(DEFAULT_CFG, key.name) is None, key.name
    args = get_cfg(overrides={"tal_topk": 9, "atss_fraction": 0.5})  # accepted by ultralytics' own check
    assert (args.tal_topk, args.atss_fraction, args.tal_beta) == (9, 0.5, None)


def test_train_arguments_override_the_yaml_and_none_keeps_it():
    yaml_keys = {"tal_topk": 7, "tal_beta": 4.0, "atss_epochs": 2}
    for args in ({"tal_topk": 9, "tal_beta": None}, SimpleNamespace(tal_topk=9, tal_beta=None, lr0=0.01)):
        hyp = TOODHyp.from_yaml(yaml_keys, args)
        assert (hyp.tal_topk, hyp.tal_beta, hyp.atss_epochs) == (9, 4.0, 2)
    assert TOODHyp.from_yaml(yaml_keys, None) == TOODHyp.from_yaml(yaml_keys) == TOODHyp.from_yaml(yaml_keys, {})
    assert train_overrides(get_cfg()) == {}


@pytest.mark.parametrize(
    "args, match",
    [
        ({"tal_topk": 0}, "'tal_topk' must be an integer >= 1, got 0"),
        ({"atss_fraction": 1.0}, r"'atss_fraction' must be a finite number in \[0, 1\), got 1.0"),
        ({"tal_topk_mode": "adaptive"}, "'tal_topk_mode' must be one of"),
        ({"tal_topk_min": 9, "tal_topk_max": 5}, "must not exceed"),  # a rule across keys, after merging
    ],
)
def test_a_bad_train_argument_is_the_schema_line(args, match):
    with pytest.raises(ValueError, match=match) as e:
        TOODHyp.from_yaml({}, args)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", ["yolov8n-tood.yaml", "yolov8n-tap.yaml"])
def test_python_train_reaches_the_criteria_of_the_model_and_its_ema(shapes, tmp_path, name):
    """model.train(tal_topk=9): the loss of the trained model and the EMA's validation loss use it; args.yaml has it."""
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import unwrap_model

    seen = {}

    def record(trainer):
        for name, m in (("model", trainer.model), ("ema", trainer.ema.ema)):
            c = unwrap_model(m).criterion
            seen[name] = (c.tood_hyp.tal_topk, c.tal_assigner.topk, c.tood_hyp.atss_fraction, c.tood_hyp.tal_beta)

    model = YOLO(name)
    model.add_callback("on_fit_epoch_end", record)  # after the epoch's validation, which creates the EMA criterion
    model.train(data=str(shapes), project=str(tmp_path), name="py", tal_topk=9, atss_fraction=0.5, **_kw(TRAIN))
    assert seen == {"model": (9, 9, 0.5, 6.0), "ema": (9, 9, 0.5, 6.0)}  # tal_beta: the YAML's
    args = yaml.safe_load((tmp_path / "py" / "args.yaml").read_text())
    assert (args["tal_topk"], args["atss_fraction"], args["tal_beta"]) == (9, 0.5, None)


def _kw(args: str) -> dict:
    return {k: yaml.safe_load(v) for k, v in (a.split("=") for a in args.split())}


def test_cli_train_with_tood_keys(shapes, tmp_path):
    """The stock ``yolo`` command takes TOOD keys; args.yaml records them and the loss follows them.

    That the criteria hold tal_topk itself is checked in-process above; here the warm-up phase the loss ran shows it.
    """
    proc = run(
        [str(YOLO_CLI), "train", "model=yolov8n-tood.yaml", f"data={shapes}", f"project={tmp_path}", "name=cli"]
        + ["tal_topk=9", "atss_fraction=0.5", *TRAIN.split()],
        tmp_path,
    )
    log = proc.stdout + proc.stderr
    assert "TOOD: train arguments tal_topk=9, atss_fraction=0.5 override the model YAML" in log
    assert "TOOD: ATSS warm-up for epoch 1 of 1 (atss_fraction 0.5)" in log  # the YAML's 1/3 rounds to 0 epochs
    args = yaml.safe_load((tmp_path / "cli" / "args.yaml").read_text())
    assert (args["tal_topk"], args["atss_fraction"], args["atss_epochs"]) == (9, 0.5, None)
    stats = json.loads((tmp_path / "cli" / "tal_stats.jsonl").read_text().splitlines()[0])
    assert stats["phase"] == "ATSS"  # the loss ran the warm-up, as atss_fraction=0.5 asked


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            ["model=yolov8n.yaml", "tal_topk=9"],
            "ValueError: tal_topk=9 is a yolo-tood key and this model has no TOOD head; train a TOOD model "
            "(e.g. model=yolov8n-tood.yaml) or drop the TOOD keys",
        ),
        (["model=yolov8q-tood.yaml"], "FileNotFoundError: yolo-tood: model config 'yolov8q-tood.yaml' does not exist"),
    ],
    ids=["stock_model", "wrong_name"],
)
def test_cli_errors_are_one_line(shapes, tmp_path, extra, message):
    proc = run(
        [str(YOLO_CLI), "train", f"data={shapes}", f"project={tmp_path}", *extra, *TRAIN.split()], tmp_path, False
    )
    assert last_line(proc).startswith(message), last_line(proc)


def _bad_head_yaml(folder: Path, row: str = "[nc, 256, 3, bn]", base: str = "yolov8-tood.yaml") -> Path:
    """A copy of a packaged YAML whose TOOD head row has other arguments."""
    d = yaml.safe_load((CFG_DIR / base).read_text())
    d["head"][-1][3] = yaml.safe_load(row)
    path = folder / "bad-head.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


BAD_SETTINGS = {  # what is typed -> the error's last line
    "tal_topk": (
        ["model=yolov8n-tood.yaml", "tal_topk=0"],
        "ValueError: TOOD: 'tal_topk' must be an integer >= 1, got 0",
    ),
    "atss_fraction": (
        ["model=yolov8n-tap.yaml", "atss_fraction=1.5"],
        "ValueError: TOOD: 'atss_fraction' must be a finite number in [0, 1), got 1.5",
    ),
    "across_keys": (
        ["model=yolov8n-tood.yaml", "tal_topk_min=30"],
        "ValueError: TOOD: 'tal_topk_min' (30) must not exceed 'tal_topk_max' (21)",
    ),
    "head_arg": (["model=bad-head.yaml"], "ValueError: TOODDetect: norm must be one of gn, gn8, sepbn, got 'bn'"),
    "near_miss": (
        ["model=yolov8n-tod.yaml"],
        "FileNotFoundError: yolo-tood: model config 'yolov8n-tod.yaml' does not exist; did you mean yolov8n-tood.yaml?",
    ),
}


def _no_run_folder(cwd: Path, project: Path) -> None:
    assert not (cwd / "runs").exists() and not project.exists(), sorted(str(p) for p in cwd.rglob("*"))


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_cli_bad_tood_settings_stop_before_the_run_folder(shapes, tmp_path, case):
    """``yolo train`` with a bad TOOD setting: one last line naming key, value and rule; no runs/ folder is left."""
    extra, message = BAD_SETTINGS[case]
    _bad_head_yaml(tmp_path)
    project = tmp_path / "proj"
    for where in ([f"project={project}"], []):  # the given project, and ultralytics' default runs/ in the cwd
        proc = run([str(YOLO_CLI), "train", f"data={shapes}", *where, *extra, *TRAIN.split()], tmp_path, False)
        assert last_line(proc) == message
        _no_run_folder(tmp_path, project)


@pytest.mark.parametrize("key, value", [("tal_topk", 0), ("atss_fraction", 1.5)])
def test_python_bad_tood_settings_stop_before_the_run_folder(shapes, tmp_path, key, value):
    """``YOLO(...).train(tal_topk=0)``: the CLI's ValueError line, and ``project=`` gets no run folder."""
    from ultralytics import YOLO

    project = tmp_path / "proj"
    with pytest.raises(ValueError) as e:
        YOLO("yolov8n-tood.yaml").train(data=str(shapes), project=str(project), **{key: value}, **_kw(TRAIN))
    assert f"ValueError: {e.value}" == BAD_SETTINGS[key][1]
    _no_run_folder(tmp_path, project)


@pytest.mark.parametrize(
    "row, base, message",
    [
        ("[nc, 256, 3, bn]", "yolov8-tood.yaml", BAD_SETTINGS["head_arg"][1].removeprefix("ValueError: ")),
        ("[nc, 0]", "yolov8-tood.yaml", "TOODDetect YAML arg: 'feat_channels' must be an integer >= 1, got 0"),
        ("[nc, faithful, both]", "yolov8-tap.yaml", "TAPDetect: interact must be one of none, box_to_cls, got 'both'"),
    ],
)
def test_a_trainer_given_a_bad_head_row_stops_before_the_run_folder(shapes, tmp_path, row, base, message):
    """The trainer API (no model built before it): the head row is checked with ultralytics' own arguments."""
    from ultralytics.models.yolo.detect import DetectionTrainer

    project = tmp_path / "proj"
    overrides = {"model": str(_bad_head_yaml(tmp_path, row, base)), "data": str(shapes), "project": str(project)}
    with pytest.raises(ValueError) as e:
        DetectionTrainer(overrides={**overrides, **_kw(TRAIN)})
    assert str(e.value) == message
    _no_run_folder(tmp_path, project)


def test_stock_cfgs_pass_the_tood_check_unchanged():
    """Stock models and stock arguments: the wrapped check_cfg leaves the cfg as ultralytics' own check leaves it."""
    import ultralytics.cfg as cfg

    for model in ("yolov8n.yaml", "yolo11n.pt", "yolov8m.yml"):  # the last does not exist: ultralytics' error later
        args = {**DEFAULT_CFG_DICT, "model": model, "mode": "train", "epochs": 3.0, "save": 1}
        expected = dict(args)
        cfg.check_cfg._yolo_tood_original(expected, hard=False)
        cfg.check_cfg(args, hard=False)
        assert args == expected and (args["epochs"], args["save"]) == (3, True)
        check_tood_cfg(args)
    with pytest.raises(TypeError, match="'save=1' is of invalid type int"):  # hard=True is passed through
        cfg.check_cfg({"save": 1})


def test_stock_model_trains_as_before_without_tood_keys(shapes, tmp_path):
    from ultralytics import YOLO

    proc = run(
        [str(YOLO_CLI), "train", "model=yolov8n.yaml", f"data={shapes}", f"project={tmp_path}", *TRAIN.split()],
        tmp_path,
    )
    assert "TOOD:" not in proc.stdout + proc.stderr  # no warm-up, phase or argument lines for a stock model
    run_dir = tmp_path / "train"
    assert type(YOLO(run_dir / "weights" / "best.pt").model.model[-1]).__name__ == "Detect"
    assert len((run_dir / "results.csv").read_text().strip().splitlines()) == 2  # header + the one epoch
    assert not (run_dir / "tal_stats.jsonl").exists()  # TOOD's assignment statistics: TOOD models only


def test_resume_keeps_the_train_arguments(shapes, tmp_path):
    """A 2-epoch run with tal_topk=9 atss_fraction=0.5, killed after epoch 1, resumes with both through the CLI."""
    script = f"""
import os
from ultralytics import YOLO
m = YOLO('yolov8n-tood.yaml')
m.add_callback('on_model_save', lambda t: os._exit(0) if t.epoch == 0 else None)
m.train(data=r'{shapes}', epochs=2, imgsz=64, batch=8, workers=0, device='cpu', plots=False,
        project=r'{tmp_path}', name='resume', val=False, tal_topk=9, atss_fraction=0.5)
"""
    run([sys.executable, "-c", script], tmp_path)
    last = tmp_path / "resume" / "weights" / "last.pt"
    proc = run([str(YOLO_CLI), "train", "resume=True", f"model={last}"], tmp_path)
    log = proc.stdout + proc.stderr
    assert "Resuming training" in log
    assert "TOOD: train arguments tal_topk=9, atss_fraction=0.5 override the model YAML" in log
    assert "TOOD: ATSS warm-up for epoch 1 of 2 (atss_fraction 0.5), then TAL" in log
    assert "TOOD: starting at epoch 2 in the TAL phase" in log
    args = yaml.safe_load((tmp_path / "resume" / "args.yaml").read_text())  # rewritten by the resumed trainer
    assert (args["tal_topk"], args["atss_fraction"], args["resume"]) == (9, 0.5, str(last))
    rows = (tmp_path / "resume" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + epochs 1 and 2


@pytest.mark.parametrize("first", ["yolo_tood.train.hyp", "yolo_tood.train.loss", "yolo_tood.nn.head", "ultralytics"])
def test_train_arguments_exist_whatever_is_imported_first(first):
    """The hook reads the schema while ultralytics.utils is being imported, also when a yolo-tood module started it."""
    code = f"import {first}; from ultralytics.utils import DEFAULT_CFG_DICT as d; print(d['tal_topk'], d['dfl_gain'])"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.stdout.split() == ["None", "None"], proc.stderr[-2000:]
