"""``yolo-tood compare`` by concern: ``models`` (names and variants), ``runs`` (training, validation and the
record cache) and ``report`` (statistics and the written report); the command is ``yolo_tood.tools.commands.compare``.
"""
