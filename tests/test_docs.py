"""The docs stay true: every ``yolo-tood`` command line they show parses (subcommand and flags exist), every shipped
model name in their code blocks resolves, and every file they link to is there."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from yolo_tood.tools.cli import build_parser
from yolo_tood.tools.commands.common import model_yaml_error

ROOT = Path(__file__).resolve().parents[1]
GUIDES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]  # the user's docs: commands and names
LINKED = [*GUIDES, ROOT / "BENCHMARKS.md"]  # links are checked in the lab notes too
FENCE = re.compile(r"```[^\n]*\n(.*?)```", re.S)
MODEL_NAME = re.compile(r"\b(?:yolov8|yolo11)[nsmlx]?-(?:tood|tap)\.yaml\b")
LINK = re.compile(r"\]\(([^)\s]+)\)")


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


def test_linked_files_exist():
    missing = []
    for doc in LINKED:
        for target in LINK.findall(doc.read_text()):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            if not (doc.parent / target.split("#", 1)[0]).exists():
                missing.append(f"{doc.name}: {target}")
    assert not missing, missing
