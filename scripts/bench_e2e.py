"""Developer shim: the same as ``yolo-tood speed`` (yolo_tood/tools/commands/speed.py), for the commands of
BENCHMARKS.md written before the installed command."""

from yolo_tood.tools.commands.speed import main

if __name__ == "__main__":
    main()
