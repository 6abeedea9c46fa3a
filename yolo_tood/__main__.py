"""``python -m yolo_tood SUB ...``: the same as the ``yolo-tood`` command."""

from yolo_tood.tools.cli import main

main()
