"""Developer shim: the same as ``yolo-tood coverage`` (yolo_tood/tools/commands/coverage.py), for the commands of
BENCHMARKS.md written before the installed command."""

from yolo_tood.tools.commands.coverage import main

if __name__ == "__main__":
    main()
