"""Small helpers shared by the modules of ``cropd_hf.evaluation``."""

from __future__ import annotations

from typing import Any

from ..checks import is_integer


def _is_positive_int(value: Any) -> bool:
    return is_integer(value) and value >= 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value
