"""Head modules: TOOD's T-Head and TAP as an ultralytics ``Detect`` subclass (torch and ultralytics.nn only)."""
