"""Developer shim: the same as ``yolo-tood alignment`` (yolo_tood/tools/commands/alignment.py), for the commands of
BENCHMARKS.md written before the installed command."""

from yolo_tood.tools.commands.alignment import main

if __name__ == "__main__":
    main()
