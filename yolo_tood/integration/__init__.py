"""Integration with ultralytics: registration, the start-up hook, export checks and the compat list.

Importing this package is cheap (no torch, no ultralytics): ``yolo_tood/__init__.py`` imports its hook at start-up.
"""
