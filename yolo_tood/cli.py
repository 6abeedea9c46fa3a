"""The ``yolo-tood`` command: the project's tools after ``pip install``.

Subcommands (``yolo-tood SUB --help`` lists every argument with its default):

- ``compare``: train stock and TOOD / TAP models with one recipe, side by side, and report accuracy, cost, speed
  and (``--alignment``) the task-alignment figures;
- ``alignment``: PCC top-50, IoU top-10, post-NMS counts and the alignment pictures of trained checkpoints;
- ``coverage``: which ground truths TOOD's ATSS warm-up leaves without a positive, before training;
- ``speed``: end-to-end val / predict latency of checkpoints, stock vs TOOD, PyTorch and ONNX;
- ``merge``: one report from several ``compare.json`` files of one recipe (seeds trained by separate calls).

Each subcommand checks its arguments before it builds or trains anything and stops with one line naming the bad
one (``yolo-tood compare: error: argument --data: data YAML 'x.yaml' not found``, exit status 2).

Examples:
    >>> from yolo_tood.cli import build_parser
    >>> sorted(build_parser().subparsers)
    ['alignment', 'compare', 'coverage', 'merge', 'speed']
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module
from typing import Any

# subcommand -> module of yolo_tood.commands with add_arguments(parser), check_args(parser, args) and run(args)
COMMANDS = {
    "compare": "compare",
    "alignment": "alignment",
    "coverage": "coverage",
    "speed": "speed",
    "merge": "merge",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the module docstrings' layout and show every argument's default."""


class Parser(argparse.ArgumentParser):
    """The top-level parser, with its subcommand parsers by name in ``subparsers``."""

    subparsers: dict[str, argparse.ArgumentParser]


def command_module(name: str) -> Any:
    """Return the module of a subcommand (imported on use: each pulls in torch and ultralytics)."""
    return import_module(f"yolo_tood.commands.{COMMANDS[name]}")


def build_parser() -> Parser:
    """Return the ``yolo-tood`` parser with one subparser per command.

    Returns:
        (Parser): Parser whose ``subparsers`` maps each command name to its own parser.
    """
    from yolo_tood import __version__

    parser = Parser(prog="yolo-tood", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"yolo-tood {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    parser.subparsers = {}
    for name in COMMANDS:
        module = command_module(name)
        summary = (module.__doc__ or "").strip().splitlines()[0].removeprefix(f"``yolo-tood {name}``: ")
        p = sub.add_parser(
            name, help=summary, description=module.__doc__, formatter_class=HelpFormatter, prog=f"yolo-tood {name}"
        )
        module.add_arguments(p)
        parser.subparsers[name] = p
    return parser


def run_command(name: str, argv: list[str] | None = None) -> Any:
    """Parse ``argv`` with subcommand ``name``'s parser, check the arguments, run it and return its results.

    Args:
        name (str): Subcommand (``compare``, ``alignment``, ``coverage``, ``speed``).
        argv (list[str], optional): Its arguments; ``sys.argv[1:]`` by default (the ``scripts/`` shims).

    Returns:
        (Any): What the command's ``run`` returns (``compare``: the content of compare.json).
    """
    parser = build_parser().subparsers[name]
    args = parser.parse_args(argv)
    module = command_module(name)
    module.check_args(parser, args)
    return module.run(args)


def main(argv: list[str] | None = None) -> None:
    """Run ``yolo-tood``: parse, check the arguments of the chosen subcommand, run it.

    Returns None: the console script passes the return value to ``sys.exit``. Python callers who want the results
    call ``run_command`` or a command module's ``main(argv)``, which return them.

    Args:
        argv (list[str], optional): Arguments after the program name; ``sys.argv[1:]`` by default.
    """
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        parser.exit(2)
    module = command_module(args.command)
    module.check_args(parser.subparsers[args.command], args)
    module.run(args)


if __name__ == "__main__":
    main()
