"""The tools: the ``yolo-tood`` command (``cli``, ``commands``) and the analyses it runs (``analysis``).

They use the plug-in (``yolo_tood.nn``, ``yolo_tood.train``, ``yolo_tood.integration``); the plug-in never imports
them (``tests/test_layers.py`` checks it).
"""
