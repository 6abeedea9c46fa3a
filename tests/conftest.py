"""Shared test fixtures."""

from __future__ import annotations

import logging

import pytest
from ultralytics.utils import LOGGER


class Records(logging.Handler):
    """Keep the messages logged to ultralytics' logger."""

    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def log():
    """The messages ultralytics' logger receives during the test."""
    handler = Records()
    LOGGER.addHandler(handler)
    yield handler.messages
    LOGGER.removeHandler(handler)
