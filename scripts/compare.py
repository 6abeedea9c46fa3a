"""Developer shim: the same as ``yolo-tood compare`` (yolo_tood/tools/commands/compare.py), for the commands of
BENCHMARKS.md written before the installed command."""

from yolo_tood.tools.commands.compare import main

if __name__ == "__main__":
    main()
