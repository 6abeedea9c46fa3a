"""Analysis: task-alignment statistics, the validator that collects them, and report tables and plots."""
