"""Crash-safe file handling: the one place in cropd_hf that writes a file atomically, moves a folder into place, and
checksums weight files. A run killed at any moment leaves either the old or the new content, never a mixture."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPLACED_SUFFIX = ".replaced"
_CHUNK_BYTES = 1 << 20


class InterruptedReplaceError(RuntimeError):
    """A previous `replace_folder` was killed between its two renames: the old folder is still set aside."""


def _fsync_path(path: Path) -> None:
    # A folder is opened read-only to fsync its entries (the names a rename created or removed).
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_folder(folder: Path) -> None:
    if os.name == "posix":  # Windows cannot open a folder; NTFS journals its renames itself
        _fsync_path(folder)


def write_text_atomically(path: Path, text: str) -> None:
    """Write `text` (UTF-8, line endings as given) to `path` so that a kill or a full disk leaves either the old
    file or the new one."""
    path = Path(path)
    # A unique temporary name in the same folder (so the rename stays on one file system): concurrent writers of
    # the same file never share a temporary; 0o666 lets the umask decide the mode, as for a plain write.
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` to disk, so that a rename publishing it never publishes files
    whose content is still only in the page cache."""
    folder = Path(folder)
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_folder(Path(root))


def check_no_interrupted_replace(target: Path) -> None:
    """Refuse to go on when `target` was set aside by a `replace_folder` that was killed before the new folder
    took its place: the previous content exists only as `<target>.replaced` and must not be lost."""
    target = Path(target)
    retired = target.with_name(target.name + REPLACED_SUFFIX)
    if retired.exists() and not target.exists():
        raise InterruptedReplaceError(
            f"{target} is missing and {retired} exists: a previous run was stopped while replacing {target}, after "
            f"moving the previous content aside. Restore it with `mv {retired} {target}` (or delete {retired} if "
            "you do not need it), then start again."
        )


def replace_folder(staging: Path, target: Path) -> None:
    """Move the finished folder `staging` to `target`, replacing any previous `target`.

    The previous folder is first renamed to `<target>.replaced`, then `staging` to `target`; a kill between the
    two renames leaves the previous content complete under `<target>.replaced` (logged before the first rename),
    and `check_no_interrupted_replace` refuses to continue until someone decides what to keep."""
    staging, target = Path(staging), Path(target)
    if not staging.is_dir():
        raise ValueError(f"replace_folder: staging={str(staging)!r} is not a folder; expected the finished output.")
    check_no_interrupted_replace(target)
    fsync_tree(staging)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.replace(staging, target)
        _fsync_folder(target.parent)
        _fsync_folder(staging.parent)
        return
    retired = target.with_name(target.name + REPLACED_SUFFIX)
    if retired.exists():  # left by a replace killed after both renames: its target holds the newer content
        logger.info(f"removing {retired}, left over from an earlier replacement of {target} that completed")
        shutil.rmtree(retired)
    logger.info(
        f"replacing {target}: the previous content is kept at {retired} until the new one (now at {staging}) is in "
        f"place; if this process stops before that, restore it with `mv {retired} {target}`"
    )
    os.replace(target, retired)
    _fsync_folder(target.parent)
    os.replace(staging, target)
    _fsync_folder(target.parent)
    _fsync_folder(staging.parent)
    shutil.rmtree(retired)


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def weight_checksums(folder: Path) -> dict[str, str]:
    """The sha256 (hex) of every `*.safetensors` file under `folder`, keyed by its POSIX path relative to `folder`
    (so `foundation/model.safetensors` is included)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"weight_checksums: folder={str(folder)!r} is not a folder.")
    return {path.relative_to(folder).as_posix(): _sha256_of(path) for path in sorted(folder.rglob("*.safetensors"))}


def tensors_sha256(tensors: Mapping[str, Any]) -> str:
    """The sha256 (hex) of torch tensors `tensors` (name -> tensor) as safetensors bytes: equal exactly when the
    names, dtypes, shapes and every bit are; e.g. to check that processes trained identical weights."""
    from safetensors.torch import save

    return hashlib.sha256(
        save({name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()})
    ).hexdigest()


def verify_weight_checksums(folder: Path, expected: dict[str, str]) -> None:
    """Raise `ValueError` unless the `*.safetensors` files under `folder` are exactly those of `expected`
    (as written by `weight_checksums`), each with its recorded sha256."""
    if not isinstance(expected, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in expected.items()
    ):
        raise ValueError(
            f"verify_weight_checksums: expected={expected!r} is not accepted; expected a dict of relative file "
            "path -> sha256 hex digest, as returned by weight_checksums()."
        )
    actual = weight_checksums(folder)
    problems = []
    for name in sorted({*expected, *actual}):
        if name not in actual:
            problems.append(f"{name} is missing (recorded sha256 {expected[name]}, found none)")
        elif name not in expected:
            problems.append(
                f"{name} is not among the recorded weight files (recorded none, found sha256 {actual[name]})"
            )
        elif actual[name] != expected[name]:
            problems.append(f"{name} has changed (recorded sha256 {expected[name]}, found {actual[name]})")
    if problems:
        raise ValueError(f"weight files under {folder} do not match their recorded checksums: {'; '.join(problems)}")
