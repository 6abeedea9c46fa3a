"""The installed ``yolo-tood`` command: every subcommand runs from an unrelated directory on tiny data, lists its
arguments with their defaults, and refuses bad arguments with one line before anything trains."""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_diagnostics import make_dataset

from yolo_tood.tools.cli import COMMANDS, build_parser, run_command

# the console script pip installs next to this interpreter ([project.scripts] in pyproject.toml)
EXE = shutil.which("yolo-tood", path=str(Path(sys.executable).parent))


def yolo_tood(*args: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the installed command in ``cwd`` (a folder outside the checkout), one torch thread."""
    assert EXE is not None, f"no yolo-tood script beside {sys.executable}: is the package installed (pip install .)?"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)  # the installed package, not the checkout
    return subprocess.run([EXE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """An unrelated working directory with a tiny dataset in it."""
    root = tmp_path_factory.mktemp("user")
    make_dataset(root / "data", n_train=2, n_val=2)
    return root


@pytest.fixture(scope="module")
def compared(workdir) -> tuple[Path, subprocess.CompletedProcess]:
    """``yolo-tood compare`` of stock and TAP, 1 epoch at 64 px; returns the output folder and the process."""
    proc = yolo_tood(
        "compare", "--data", "data/data.yaml", "--models", "stock", "tap", "--seeds", "0", "--epochs", "1",
        "--imgsz", "64", "--batch", "2", "--workers", "0", "--out", "cmp", cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir / "cmp", proc


def test_help_lists_every_subcommand_and_argument_with_its_default(workdir):
    proc = yolo_tood("--help", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert all(name in proc.stdout for name in COMMANDS)
    parser = build_parser()
    for name, sub in parser.subparsers.items():
        text = " ".join(sub.format_help().split())  # argparse wraps lines
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[0] if action.option_strings else action.dest  # a positional by its name
            assert flag in text, (name, action.dest)
            assert action.help, f"yolo-tood {name} {flag} has no help text"
            if action.option_strings and not action.required and action.nargs != 0 and action.default not in (None, ""):
                shown = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
                assert f"(default: {shown})" in text or action.default == [], (name, action.dest)


def option_entries(text: str) -> list[str]:
    """Split the options part of a ``--help`` text into one entry per option (its flag line and continuation lines)."""
    entries: list[str] = []
    for line in text.split("options:", 1)[-1].splitlines():
        if re.match(r"  \S", line):  # an option starts at indent 2; its wrapped help is indented further
            entries.append(line)
        elif entries and line.startswith("   "):
            entries[-1] += " " + line.strip()
    return entries


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_is_plain_text_with_each_default_once(command, capsys):
    """``yolo-tood [COMMAND] --help``: exit 0, no doctest, no RST double backticks, no line continuation joined into
    the text, and no option showing ``(default: ...)`` twice (a help that states its default in words keeps it)."""
    from yolo_tood.tools.cli import main

    with pytest.raises(SystemExit) as e:
        main([command, "--help"] if command else ["--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0 and text.startswith("usage: yolo-tood")
    assert ">>>" not in text and "``" not in text
    assert not re.search(r"\S {4,}--", text), "a docstring's backslash continuation was joined into one line"
    entries = option_entries(text)
    assert entries and all(entry.count("(default:") <= 1 for entry in entries), entries
    assert "(default: None)" not in text and "(default: [" not in text  # Python values, not what one types


def test_compare_trains_side_by_side_and_reports(compared):
    out, proc = compared
    assert "[1/2] stock seed 0: training" in proc.stdout and "[2/2] tap seed 0: training" in proc.stdout
    assert "[2/2] tap seed 0: val mAP50-95 " in proc.stdout
    assert "| stock |" in proc.stdout and "| tap |" in proc.stdout  # the final table
    report = json.loads((out / "compare.json").read_text())  # --out is relative to the working directory
    assert set(report["runs"]) == {"stock", "tap"} and report["splits"] == ["val"]
    assert (out / "runs" / "tap_s0" / "weights" / "best.pt").is_file()
    assert report["runs"]["tap"]["0"]["recipe"]["cfg"].endswith("yolov8n-tap.yaml")


def test_alignment_writes_table_json_and_pictures(compared, workdir):
    out, _ = compared
    weights = [str(out / "runs" / f"{m}_s0" / "weights" / "best.pt") for m in ("stock", "tap")]
    proc = yolo_tood(
        "alignment", "--models", *weights, "--names", "stock", "tap", "--data", "data/data.yaml", "--imgsz", "64",
        "--batch", "2", "--json", "align.json", "--plots", "align", "--map-images", "1", "--tap-parts", cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| stock |" in proc.stdout and "| tap |" in proc.stdout and "| tap (M off) |" in proc.stdout
    payload = json.loads((workdir / "align.json").read_text())
    assert set(payload["models"]) == {"stock", "tap", "tap (M off)", "tap (offsets off)"}  # no parts for stock
    assert payload["models"]["tap (offsets off)"]["num_images"] == 2
    pictures = {p.name for p in (workdir / "align").glob("*.png")}
    assert {"score_iou.png", "distributions.png"} <= pictures and any(p.startswith("maps_") for p in pictures)


def test_coverage_prints_the_table(workdir):
    proc = yolo_tood(
        "coverage", "--data", "data/data.yaml", "--split", "val", "--imgsz", "64", "--json", "cov.json", cwd=workdir
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| all |" in proc.stdout
    counts = json.loads((workdir / "cov.json").read_text())
    assert set(counts) == {"reference", "atss_min_pos=1"}


def test_speed_times_pytorch_and_onnx(compared, workdir):
    out, _ = compared
    weights = [f"{m}={out / 'runs' / f'{m}_s0' / 'weights' / 'best.pt'}" for m in ("stock", "tap")]
    proc = yolo_tood(
        "speed", "--weights", *weights, "--data", "data/data.yaml", "--imgsz", "64", "--batch", "1", "--images", "2",
        "--repeats", "1", "--threads", "1", "--out", "speed.md", cwd=workdir,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (workdir / "speed.md").read_text()
    for fmt in ("pytorch", "onnx"):
        assert f"| val | {fmt} | 1 | tap |" in table and f"| predict | {fmt} | 1 | stock |" in table


def second_seed(report: dict, tmp: Path, shift: float) -> Path:
    """A copy of a one-seed report as if seed 1 had been trained by another call: val mAP50-95 + ``shift``."""
    other = copy.deepcopy(report)
    for label, seeds in other["runs"].items():
        record = seeds.pop("0")
        record["val"]["val"]["map"] += shift
        record["curve"] = [c + shift for c in record["curve"]]
        record["train"]["save_dir"] = str(tmp / "gone" / f"{label}_s1")  # its run dir is not on this machine
        seeds["1"] = record
    path = tmp / "seed1" / "compare.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(other))
    return path


def test_merge_reports_the_union_of_two_compare_calls(compared, workdir):
    out, _ = compared
    report = json.loads((out / "compare.json").read_text())
    assert len(report["runs"]["tap"]["0"]["curve"]) == 1  # compare keeps each run's val curve in its record
    seed1 = second_seed(report, workdir, shift=0.25)
    proc = yolo_tood("merge", "cmp", str(seed1), "--out", "merged", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    merged = json.loads((workdir / "merged" / "compare.json").read_text())
    assert merged["merged_from"] == [str(out / "compare.json"), str(seed1)]
    assert merged["args"]["seeds"] == [0, 1] and list(merged["runs"]) == ["stock", "tap"]
    for label in ("stock", "tap"):
        a = report["runs"][label]["0"]["val"]["val"]["map"]
        ms = merged["summary"][label]["splits"]["val"]["map"]
        assert ms["n"] == 2 and ms["mean"] == pytest.approx(a + 0.125) and ms["std"] == pytest.approx(0.25 / 2**0.5)
    assert merged["summary"]["tap"]["paired_vs_stock"]["val"]["n"] == 2  # tap - stock, seed by seed
    assert merged["curve_gaps"]["tap"]["seeds"] == [2, 2]  # seed 1's curve from its record, seed 0's as well
    table = (workdir / "merged" / "compare.md").read_text()
    assert "seeds 0 1" in table and "| tap | 1 |" in table and "over 2 seeds" in table
    assert (workdir / "merged" / "compare_map.png").is_file()


def test_merge_refuses_reports_that_do_not_belong_together(compared, workdir, capsys, monkeypatch):
    out, _ = compared
    report = json.loads((out / "compare.json").read_text())
    other = second_seed(report, workdir / "other_recipe", shift=0.0)
    changed = json.loads(other.read_text())
    changed["recipe"]["epochs"] = 2
    other.write_text(json.dumps(changed))
    monkeypatch.chdir(workdir)
    for argv, message in (
        (["cmp", "cmp/compare.json"], "run stock seed 0 is in both"),
        (["cmp", str(other)], "differ in epochs (epochs: 2 vs 1)"),
        (["cmp", "nothing.json"], "'nothing.json' is not a compare.json file"),
        (["cmp", "data/data.yaml"], "is not JSON"),
    ):
        with pytest.raises(SystemExit) as exc:
            run_command("merge", [*argv, "--out", "never"])
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert exc.value.code == 2 and message in last and last.startswith("yolo-tood merge: error: "), last
    assert not (workdir / "never").exists()


def test_merge_tells_two_source_checkpoints_at_one_path_apart(compared):
    """Fine-tuning reports from one --pretrained path but different checkpoint bytes are refused; a report written
    before compare recorded the digest merges as before."""
    from yolo_tood.tools.commands.merge import merge_runs

    out, _ = compared
    report = json.loads((out / "compare.json").read_text())
    report["recipe"]["pretrained"] = "/runs/src/best.pt"
    reports = []
    for seed_shift, digest in ((0, "aa" * 32), (1, "bb" * 32), (2, None)):
        other = copy.deepcopy(report)
        other["runs"] = {k: {str(seed_shift): v["0"]} for k, v in report["runs"].items()}
        if digest is not None:
            other["recipe"]["pretrained_sha256"] = digest
        reports.append({**other, "file": f"report{seed_shift}"})
    with pytest.raises(ValueError, match=r"differ in pretrained_sha256 \(pretrained_sha256: 'b+' vs 'a+'\)"):
        merge_runs(reports[:2])
    merged = merge_runs([reports[0], reports[2]])  # the older report has no digest: nothing to compare
    assert sorted(merged["tap"]) == [0, 2]


def test_merge_tells_two_heads_behind_one_yaml_name_apart(compared):
    """Runs of one YAML name whose parameter counts differ (a shipped YAML's head changed between versions) are
    refused; a record without a cost merges as before."""
    from yolo_tood.tools.commands.merge import merge_runs

    out, _ = compared
    report = json.loads((out / "compare.json").read_text())
    reports = []
    for seed, extra in ((0, 0), (1, 800), (2, None)):
        other = copy.deepcopy(report)
        other["runs"] = {k: {str(seed): copy.deepcopy(v["0"])} for k, v in report["runs"].items()}
        record = other["runs"]["tap"][str(seed)]
        if extra is None:
            del record["cost"]
        else:
            record["cost"]["params"] += extra
        reports.append({**other, "file": f"report{seed}"})
    count = report["runs"]["tap"]["0"]["cost"]["params"]
    with pytest.raises(ValueError, match=f"model 'tap' .* has {count + 800:,} parameters in report1 but {count:,}"):
        merge_runs(reports[:2])
    assert sorted(merge_runs([reports[0], reports[2]])["tap"]) == [0, 2]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["compare", "--data", "missing.yaml"], "argument --data: data YAML 'missing.yaml' not found"),
        (["compare", "--data", "data/data.yaml", "--models", "stock", "tod"], "argument --models: unknown model 'tod'"),
        (["compare", "--data", "data/data.yaml", "--models", "tap:tal_topk=0"], "'tal_topk' must be an integer >= 1"),
        (["compare", "--data", "data/data.yaml", "--models", "tap:interact=both"], "bad value 'both' for interact"),
        (["compare", "--data", "data/data.yaml", "--models", "yolov8q-tood.yaml"], "argument --models: yolo-tood:"),
        (["compare", "--data", "data/data.yaml", "--pretrained", "none.pt"], "argument --pretrained: 'none.pt'"),
        (["alignment", "--data", "data/data.yaml", "--models", "yolov8n.yaml", "--split", "test"], "no 'test' split"),
        (["alignment", "--data", "data/data.yaml", "--models", "best.pt"], "argument --models: 'best.pt' is not a"),
        (["coverage", "--data", "data/data.yaml", "--settings", "topk=3"], "argument --settings: bad setting item"),
        (["speed", "--data", "data/data.yaml", "--weights", "stock.pt"], "argument --weights: 'stock.pt' is not name="),
    ],
)
def test_bad_arguments_fail_with_one_line_before_training(argv, message, workdir, capsys, monkeypatch):
    """In-process (the same parser and checks as the command): the error names the argument and nothing runs."""
    import yolo_tood.tools.cli as cli

    monkeypatch.chdir(workdir)
    ran = []
    monkeypatch.setattr(
        cli, "command_module", lambda name: _NoRun(cli.import_module(f"yolo_tood.tools.commands.{name}"), ran)
    )
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2 and not ran
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"yolo-tood {argv[0]}: error: ") and message in last, last


def test_compare_takes_the_head_arguments_of_the_head_table(workdir, monkeypatch):
    """``--models tap:quality=both``: every head argument of the head table is a variant key, checked in-process by
    the command's own checks, which pass; ``--models``' help names them from the table."""
    import yolo_tood.tools.cli as cli
    from yolo_tood.integration.heads import head_spec

    monkeypatch.chdir(workdir)
    ran = []
    monkeypatch.setattr(
        cli, "command_module", lambda name: _NoRun(cli.import_module(f"yolo_tood.tools.commands.{name}"), ran)
    )
    models = ["tap:quality=both,interact=box_to_cls", "tood:quality=features,norm=sepbn"]
    cli.main(["compare", "--data", "data/data.yaml", "--models", *models])
    assert [args.models for args in ran] == [models]
    text = " ".join(cli.build_parser(["compare"]).subparsers["compare"].format_help().split())
    assert all(", ".join(head_spec(name).yaml_args) in text for name in ("TOODDetect", "TAPDetect"))


def test_bad_argument_of_the_installed_command(workdir):
    proc = yolo_tood("compare", "--data", "missing.yaml", cwd=workdir)
    assert proc.returncode == 2 and not (workdir / "runs").exists()
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "yolo-tood compare: error: argument --data: data YAML 'missing.yaml' not found"
    )


class _NoRun:
    """A subcommand module whose ``run`` records the call instead of running (the checks are the real ones)."""

    def __init__(self, module, ran: list):
        self._module, self._ran = module, ran

    def __getattr__(self, name):
        return getattr(self._module, name)

    def run(self, args):
        self._ran.append(args)


def test_command_summaries_are_the_modules_first_docstring_lines():
    """``yolo-tood --help`` prints COMMANDS without importing the modules; each is its module's first line."""
    from yolo_tood.tools.cli import command_module
    from yolo_tood.tools.commands.common import plain_text

    for name, summary in COMMANDS.items():
        first = plain_text(command_module(name).__doc__).strip().splitlines()[0]
        assert first == f"yolo-tood {name}: {summary}", name


def test_tal_stats_without_statistics_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        run_command("tal-stats", [str(tmp_path)])
    assert e.value.code == 2 and "tal_stats.jsonl not found" in capsys.readouterr().err
