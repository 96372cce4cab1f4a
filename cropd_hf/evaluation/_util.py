"""Small helpers shared by the modules of ``cropd_hf.evaluation``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def _write_atomically(path: Path, text: str) -> None:
    """Write to a temporary name and rename: a kill never leaves a half-written file behind."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)
