"""Argument checks and data helpers shared by the ``yolo-tood`` subcommands.

Every check runs before any model is built or trained and fails through ``parser.error``: one line naming the
argument (``yolo-tood compare: error: argument --data: ...``) and exit status 2, as argparse does for its own errors.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the descriptions' layout and show each option's default once, as it is typed on the command line.

    ``argparse.ArgumentDefaultsHelpFormatter`` appends ``(default: ...)`` to every option, also after a help that
    states its default in words, and prints Python values (``None``, ``['stock', 'tood']``). Here a help that says
    ``(default: ...)`` itself is kept as is; no default is shown for switches and for options without one (None, empty);
    a list default is shown as its values separated by spaces.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        """Return the action's help with its default appended when there is one worth showing."""
        text, default = action.help or "", action.default
        positional = not action.option_strings and action.nargs not in {argparse.OPTIONAL, argparse.ZERO_OR_MORE}
        if "(default:" in text or positional or action.nargs == 0 or default in (None, "", [], argparse.SUPPRESS):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"  # argparse %-formats the help


def plain_text(doc: str) -> str:
    """Return a command module's docstring as ``--help`` text: without the RST double backticks around code.

    Examples:
        >>> plain_text("``yolo-tood merge``: one report from several ``compare.json`` files")
        'yolo-tood merge: one report from several compare.json files'
    """
    return doc.replace("``", "")


def command_parser(module: Any, name: str, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Return ``parser`` (default: a new one for ``yolo-tood <name>``) with a command module's description (its
    docstring as plain text) and arguments (``module.add_arguments``)."""
    parser = parser or argparse.ArgumentParser(prog=f"yolo-tood {name}", formatter_class=HelpFormatter)
    parser.description = plain_text(module.__doc__)
    module.add_arguments(parser)
    return parser


def parse_and_run(module: Any, name: str, argv: list[str] | None = None) -> Any:
    """Parse ``argv`` (default ``sys.argv[1:]``) with a command module's parser, check the arguments, run it."""
    parser = command_parser(module, name)
    args = parser.parse_args(argv)
    module.check_args(parser, args)
    return module.run(args)


def data_yaml(parser: argparse.ArgumentParser, data: str, flag: str = "--data") -> dict[str, Any]:
    """Return a detection data YAML's content, or stop with one line if it cannot be read.

    A path that exists is read as is; any other value is looked up as ultralytics looks up its own dataset names
    (``coco8.yaml`` in its package), without downloading anything.

    Args:
        parser (argparse.ArgumentParser): The subcommand's parser (for the error line).
        data (str): The ``--data`` value.
        flag (str): The argument's name in the error line.

    Returns:
        (dict[str, Any]): The YAML's mapping (``train``, ``val``, ``names``, ...).
    """
    path = Path(data)
    if not path.is_file():
        from ultralytics.utils.checks import check_yaml

        try:
            path = Path(check_yaml(data, hard=True))
        except Exception:  # ultralytics raises FileNotFoundError, or others for a URL: all mean "not a data YAML here"
            parser.error(f"argument {flag}: data YAML {data!r} not found")
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        parser.error(f"argument {flag}: cannot read {data!r}: {e}".splitlines()[0])
    if not isinstance(content, dict) or "val" not in content and "train" not in content:
        parser.error(f"argument {flag}: {data!r} is not a detection data YAML (no train/val keys)")
    return content


def check_split(
    parser: argparse.ArgumentParser, data: str, content: dict[str, Any], split: str, flag: str = "--split"
) -> None:
    """Stop with one line naming ``flag`` if the data YAML defines no such split (``test:`` missing or empty, say)."""
    if not content.get(split):
        have = ", ".join(k for k in ("train", "val", "test", "minival") if content.get(k))
        parser.error(f"argument {flag}: {data!r} has no {split!r} split (it has: {have or 'none'})")


def model_yaml_error(name: str) -> str | None:
    """Return why a model YAML name or path does not resolve (ultralytics' lookup and yolo-tood's names), or None.

    Examples:
        >>> model_yaml_error("yolov8n-tap.yaml") is None
        True
    """
    from ultralytics.nn.tasks import yaml_model_load  # importing it registers yolo-tood's names (the package hook)

    try:
        yaml_model_load(name)
    except (FileNotFoundError, OSError) as e:
        return str(e).splitlines()[0] if str(e) else f"model config {name!r} does not exist"
    return None


def check_models(parser: argparse.ArgumentParser, flag: str, models: list[str]) -> None:
    """Stop with one line naming the first of ``models`` that is neither a file nor a model YAML that resolves."""
    for m in models:
        if Path(m).is_file():
            continue
        if m.endswith((".yaml", ".yml")):
            if (why := model_yaml_error(m)) is not None:
                parser.error(f"argument {flag}: {why}")
            continue
        parser.error(f"argument {flag}: {m!r} is not a file (a checkpoint .pt / .onnx or a model YAML)")


def split_images(data: str, split: str, n: int) -> list[Path]:
    """Return the first ``n`` image files of a dataset split (a folder, a list file, or a list of either).

    Args:
        data (str): Detection data YAML.
        split (str): Split key (``val``, ``test``, ...).
        n (int): Number of images.

    Returns:
        (list[Path]): Image paths, sorted by name within each folder.
    """
    from ultralytics.data.utils import IMG_FORMATS, check_det_dataset

    sources = check_det_dataset(data)[split]
    files: list[Path] = []
    for src in sources if isinstance(sources, list) else [sources]:
        src = Path(src)
        if src.is_dir():
            files += sorted(f for f in src.rglob("*") if f.suffix[1:].lower() in IMG_FORMATS)
        elif src.suffix == ".txt":
            files += [(src.parent / line.strip()).resolve() for line in src.read_text().splitlines() if line.strip()]
    return files[:n]
