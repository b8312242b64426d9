"""The one exception type users see: a single line that says what is wrong and how to fix it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class GentrainError(Exception):
    """A user-facing error. The CLI prints ``error: <message>`` on one line and exits with ``exit_code``.

    Messages name the fix, e.g. ``"dataset.path='x' does not exist; pass dataset.path=<folder of images>"``.
    """

    exit_code: int = 2


def check_choice(value: Any, options: Sequence[str], key: str, example: str) -> str:
    """``value`` if it is one of ``options``; else one line naming ``key``, the options and an example."""
    if value not in options:
        raise GentrainError(f"{key}={value!r} is not one of {', '.join(options)}; e.g. {key}={example}")
    return value


def check_int(value: Any, key: str, minimum: int = 1, example: int | None = None) -> int:
    """``value`` if it is an integer >= ``minimum`` (booleans are not); else one line naming ``key`` and an example."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GentrainError(f"{key} must be an integer >= {minimum}, got {value!r}; e.g. {key}={minimum if example is None else example}")
    return value


def check_int_list(value: Any, key: str, example: str, note: str = "") -> list[int]:
    """``value`` as a list of integers, or one line naming ``key`` (a string such as ``abc`` is not read letter by letter)."""
    if isinstance(value, (str, bytes, bool)) or not isinstance(value, Sequence) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise GentrainError(f"{key} must be a list of integers, got {value!r}; e.g. {key}={example}{note}")
    return [int(v) for v in value]
