"""The subcommands of ``yolo-tood`` (``yolo_tood.tools.cli``), one module each, above the analysis layer.

Each module has ``add_arguments(parser)``, ``check_args(parser, args)`` (runs before anything is built or trained;
one line naming a bad argument) and ``run(args)``; ``main(argv)`` does all three, for Python callers and the
developer shims in ``scripts/``.
"""
