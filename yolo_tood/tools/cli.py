"""The ``yolo-tood`` command: the project's tools after ``pip install``.

Subcommands (``yolo-tood SUB --help`` lists every argument with its default; ``DESCRIPTION`` and ``COMMANDS`` are the
top-level ``--help``, plain text):

- ``compare``: train stock and TOOD / TAP models with one recipe, side by side, and report accuracy, cost, speed
  and (``--alignment``) the task-alignment figures;
- ``alignment``: PCC top-50, IoU top-10, post-NMS counts and the alignment pictures of trained checkpoints;
- ``coverage``: which ground truths TOOD's ATSS warm-up leaves without a positive, before training;
- ``speed``: end-to-end val / predict latency of checkpoints, stock vs TOOD, PyTorch and ONNX;
- ``merge``: one report from several ``compare.json`` files of one recipe (seeds trained by separate calls);
- ``tal-stats``: the picture of a TOOD run's label-assignment statistics (``tal_stats.jsonl``, written in training).

Each subcommand checks its arguments before it builds or trains anything and stops with one line naming the bad
one (``yolo-tood compare: error: argument --data: data YAML 'x.yaml' not found``, exit status 2).

Examples:
    >>> from yolo_tood.tools.cli import build_parser
    >>> sorted(build_parser().subparsers)
    ['alignment', 'compare', 'coverage', 'merge', 'speed', 'tal-stats']
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from typing import Any

from .commands.common import HelpFormatter, command_parser, parse_and_run

# subcommand -> its one-line summary (the first line of its module's docstring as plain text, ``tests/test_cli.py``
# checks): the top-level ``--help`` prints these without importing the modules, which pull in torch and ultralytics
COMMANDS = {
    "compare": "train stock and TOOD models with one recipe, side by side; compare accuracy, cost, speed.",
    "alignment": "the task alignment of detectors side by side (TOOD paper, Table 7 analysis).",
    "coverage": "which ground truths TOOD's ATSS warm-up leaves without a positive anchor, before training.",
    "speed": "end-to-end val and predict latency of trained checkpoints, stock vs TOOD, PyTorch and ONNX.",
    "merge": "one report from several compare.json files of one recipe (seeds trained apart).",
    "tal-stats": "the picture of a TOOD run's label-assignment statistics (tal_stats.jsonl -> PNG).",
}
DESCRIPTION = """\
yolo-tood: the tools of yolo-tood (TOOD's task-aligned heads for Ultralytics YOLO). Train, validate, predict and
export TOOD models with ultralytics' own yolo command; these commands compare and diagnose them.

Run 'yolo-tood COMMAND --help' for a command's arguments and their defaults."""
EPILOG = """\
Each command checks its arguments before it builds or trains anything and stops with one line naming the bad one
(yolo-tood compare: error: argument --data: data YAML 'x.yaml' not found), exit status 2."""


class Parser(argparse.ArgumentParser):
    """The top-level parser, with its subcommand parsers by name in ``subparsers``."""

    subparsers: dict[str, argparse.ArgumentParser]


def command_module(name: str) -> Any:
    """Return the module of a subcommand (``yolo_tood.tools.commands.<name>``, imported on use)."""
    return import_module(f"yolo_tood.tools.commands.{name.replace('-', '_')}")


def build_parser(commands: list[str] | None = None) -> Parser:
    """Return the ``yolo-tood`` parser: one subparser per command, with its arguments for ``commands`` (default: all).

    Only the modules of ``commands`` are imported; the other subparsers carry their summary alone.

    Returns:
        (Parser): Parser whose ``subparsers`` maps each command name to its own parser.
    """
    from yolo_tood import __version__

    commands = list(COMMANDS) if commands is None else commands
    parser = Parser(prog="yolo-tood", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"yolo-tood {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    parser.subparsers = {}
    for name, summary in COMMANDS.items():
        p = sub.add_parser(name, help=summary, formatter_class=HelpFormatter, prog=f"yolo-tood {name}")
        if name in commands:
            command_parser(command_module(name), name, p)
        parser.subparsers[name] = p
    return parser


def run_command(name: str, argv: list[str] | None = None) -> Any:
    """Parse ``argv`` with subcommand ``name``'s parser, check the arguments, run it and return its results.

    Args:
        name (str): Subcommand (``compare``, ``alignment``, ``coverage``, ``speed``, ``merge``, ``tal-stats``).
        argv (list[str], optional): Its arguments; ``sys.argv[1:]`` by default (the ``scripts/`` shims).

    Returns:
        (Any): What the command's ``run`` returns (``compare``: the content of compare.json).
    """
    return parse_and_run(command_module(name), name, argv)


def main(argv: list[str] | None = None) -> None:
    """Run ``yolo-tood``: parse, check the arguments of the chosen subcommand, run it.

    Only the chosen subcommand's module is imported, so ``yolo-tood --help`` imports neither torch nor ultralytics.
    Returns None: the console script passes the return value to ``sys.exit``. Python callers who want the results
    call ``run_command`` or a command module's ``main(argv)``, which return them.

    Args:
        argv (list[str], optional): Arguments after the program name; ``sys.argv[1:]`` by default.
    """
    argv = sys.argv[1:] if argv is None else argv
    chosen = [a for a in argv[:1] if a in COMMANDS]  # the subcommand is the first argument
    parser = build_parser(chosen)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        parser.exit(2)
    module = command_module(args.command)
    module.check_args(parser.subparsers[args.command], args)
    module.run(args)


if __name__ == "__main__":
    main()
