"""Input checks shared by every layer (no torch, no ultralytics): one rule, one message format."""

from __future__ import annotations

from typing import Any

__all__ = ("check_choice", "check_int")


def check_int(value: Any, name: str, owner: str = "TOOD", minimum: int = 1) -> int:
    """Return ``value`` if it is an int >= ``minimum``, else raise one ValueError line naming ``owner`` and ``name``.

    A bool is rejected although it is an int subclass: ``tal_topk: true`` in a YAML is certainly a mistake.

    Args:
        value (Any): The value to check.
        name (str): Its name in the error message, e.g. ``"tal_topk"``.
        owner (str): Who checks, the message prefix, e.g. ``"TOODDetect"``.
        minimum (int): The smallest allowed value; 1 for a positive int.

    Returns:
        (int): ``value``.

    Examples:
        >>> check_int(3, "stacked_convs")
        3
        >>> check_int(True, "tal_topk")  # ValueError: TOOD: 'tal_topk' must be an integer >= 1, got True
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}: '{name}' must be an integer >= {minimum}, got {value!r}")
    return value


def check_choice(value: Any, choices: tuple[str, ...], name: str, owner: str) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise one ValueError line naming ``owner`` and ``name``.

    Examples:
        >>> check_choice("gn", ("gn", "sepbn"), "norm", "TOODDetect")
        'gn'
        >>> check_choice("bn", ("gn", "sepbn"), "norm", "TOODDetect")  # ValueError: TOODDetect: norm must be one of ...
    """
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(choices)}, got {value!r}")
    return value
