"""The docs stay true: every ``yolo-tood`` command line they show parses (subcommand and flags exist), every shipped
model name in their code blocks resolves, every file and heading they link to is there, the README stays a short read
whose install and test commands are the ones CI runs, and its figures are docs/evidence.md's, whose figures are
BENCHMARKS.md's."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from yolo_tood.tools.cli import build_parser
from yolo_tood.tools.commands.common import model_yaml_error

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # the user's docs: commands and names
LINKED = [*GUIDES, ROOT / "BENCHMARKS.md"]  # links are checked in the lab notes too
FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
MODEL_NAME = re.compile(r"\b(?:yolov8|yolo11|yolo26)[nsmlx]?-(?:tood|tap)\.yaml\b")
LINK = re.compile(r"\]\(([^)\s]+)\)|^\[[^\]]+\]: (\S+)", re.M)  # inline links and reference definitions
HEADING = re.compile(r"^#{1,6} (.+)$", re.M)
FIGURE = re.compile(r"[+-]?\d+\.\d+ ± \d+\.\d+")  # a mean ± spread, as the docs write results
RATIO = re.compile(r"\b\d+\.\d+x\b")  # a cost ratio against stock
README = ROOT / "README.md"
EVIDENCE = ROOT / "docs" / "evidence.md"
README_MAX_LINES = 150  # a 5-minute read; the details live in docs/


def code_blocks(path: Path) -> list[str]:
    return FENCE.findall(path.read_text())


def command_lines(block: str) -> list[list[str]]:
    """The ``yolo-tood ...`` commands of a shell block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    commands = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0].strip()
        if line.startswith("yolo-tood"):
            commands.append(shlex.split(line)[1:])
    return commands


def all_commands() -> list[tuple[str, list[str]]]:
    return [(p.name, argv) for p in GUIDES for b in code_blocks(p) for argv in command_lines(b)]


def test_the_readme_shows_every_subcommand():
    shown = {argv[0] for _, argv in all_commands() if argv and not argv[0].startswith("-")}
    assert shown == set(build_parser().subparsers)


@pytest.mark.parametrize(("doc", "argv"), all_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_every_command_line_parses(doc, argv):
    parser = build_parser()
    if argv[0].startswith("-"):
        assert set(argv) <= {"--help", "-h", "--version"}, (doc, argv)
        return
    assert argv[0] in parser.subparsers, f"{doc}: no subcommand {argv[0]!r}"
    sub = parser.subparsers[argv[0]]
    known = {s for a in sub._actions for s in a.option_strings}
    flags = [a for a in argv[1:] if a.startswith("--")]
    assert set(flags) <= known, f"{doc}: yolo-tood {argv[0]} has no {sorted(set(flags) - known)}"
    if "--help" not in flags:
        sub.parse_args(argv[1:])  # values of the right type and count (files need not exist here)


def test_shipped_model_names_in_code_blocks_resolve():
    names = {n for p in GUIDES for b in code_blocks(p) for n in MODEL_NAME.findall(b)}
    assert {"yolov8n-tood.yaml", "yolov8n-tap.yaml"} <= names  # the README shows both heads
    bad = {n: why for n in sorted(names) if (why := model_yaml_error(n)) is not None}
    assert not bad, bad


def links(doc: Path) -> list[str]:
    return [inline or ref for inline, ref in LINK.findall(doc.read_text())]


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (word characters, spaces and hyphens stay), each
    space a hyphen."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_linked_files_exist():
    missing = []
    for doc in LINKED:
        for target in links(doc):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            if not (doc.parent / target.split("#", 1)[0]).exists():
                missing.append(f"{doc.name}: {target}")
    assert not missing, missing


def test_linked_headings_exist():
    """A link to ``page.md#anchor`` lands on a heading of that page (GitHub's anchors), so evidence links do not rot
    when a section is renamed."""
    missing = []
    for doc in LINKED:
        for target in links(doc):
            path, _, frag = target.partition("#")
            if not frag or not path.endswith(".md") or target.startswith(("http://", "https://")):
                continue
            page = doc.parent / path
            if page.exists() and frag not in {anchor(h) for h in HEADING.findall(page.read_text())}:
                missing.append(f"{doc.name}: {target}")
    assert not missing, missing


def test_the_readme_is_a_short_read():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines; move details to docs/"
    text = README.read_text()
    assert "## Which head, and what to expect" in text
    assert text.index("## Which head, and what to expect") < text.index("## Install")
    table = text.split("## Which head, and what to expect", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in table.splitlines() if r.startswith("|") and not r.startswith(("| you", "|---"))]
    assert len(rows) >= 4, rows
    for row in rows:  # every recommendation links its evidence
        assert "](docs/evidence.md#" in row, row


def test_readme_install_and_test_commands_are_what_ci_runs():
    """README's install and test lines are .ci/run's, and every extra the README installs exists in pyproject.toml."""
    blocks = "\n".join(code_blocks(README))
    ci = (ROOT / ".ci" / "run").read_text()
    for line in ("pip install .", 'pip install ".[test]"', "pytest"):
        assert re.search(rf"^{re.escape(line)}$", ci, re.M), f".ci/run no longer runs {line!r}"
        assert re.search(rf"^{re.escape(line)}(\s|$)", blocks, re.M), f"README.md does not show {line!r}"
    assert "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu" in blocks
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    shown = set(re.findall(r'pip install "\.\[(\w+)\]"', blocks))
    assert {"test", "export"} <= shown, shown
    assert shown <= set(extras), shown - set(extras)
    assert {"onnx", "onnxruntime", "onnxslim"} <= {re.split(r"[<>=!~ ]", d, maxsplit=1)[0] for d in extras["export"]}


def test_readme_figures_are_the_evidence_pages():
    """Every result (mean ± spread) and cost ratio the README quotes is on docs/evidence.md, and every result there is
    in BENCHMARKS.md, where its command is: a figure changes in one place and the test names the stale copy."""
    readme, evidence = README.read_text(), EVIDENCE.read_text()
    benchmarks = (ROOT / "BENCHMARKS.md").read_text()
    stale = [f for f in FIGURE.findall(readme) + RATIO.findall(readme) if f not in evidence]
    assert not stale, f"README.md figures not on docs/evidence.md: {stale}"
    stale = sorted({f for f in FIGURE.findall(evidence) if f not in benchmarks})
    assert not stale, f"docs/evidence.md figures not in BENCHMARKS.md: {stale}"
