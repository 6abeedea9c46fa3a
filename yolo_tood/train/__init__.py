"""Training: the ATSS and task-aligned assigners, the TOOD loss and its hyper-parameters."""
