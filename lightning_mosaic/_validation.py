"""Argument checks shared by the public classes: errors name the parameter, the value received and what is allowed."""

from __future__ import annotations

from numbers import Integral, Real
from typing import Any


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None, *, hint: str = "") -> int:
    """Return ``value`` as an ``int`` if it is an integer in ``[minimum, maximum]``.

    Raises:
        ValueError: Naming ``name``, the value (and its type when it is not an integer) and the allowed range;
            ``hint`` is appended (e.g. where the bound comes from).
    """
    allowed = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"{name} must be {allowed}{hint}, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {allowed}{hint}, got {value!r}")
    return int(value)


def check_probability(name: str, value: Any) -> float:
    """Return ``value`` as a ``float`` if it is a number in [0, 1].

    Raises:
        ValueError: Naming ``name`` and the value received.
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)
