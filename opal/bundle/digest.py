"""The bundle digest: SHA-256 over an RFC 8785 canonical manifest of every
file's path, size and SHA-256. Paths are included, so a rename changes it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from opal.canonical import canonical_json, sha256_hex
from opal.errors import BadInputError

__all__ = ["file_manifest", "bundle_digest", "read_bundle_files", "MAX_BUNDLE_BYTES"]

MAX_BUNDLE_BYTES = 2 * 2**20
_SKIP_DIRS = {"__pycache__", ".git", ".ipynb_checkpoints"}


def file_manifest(files: Mapping[str, bytes]) -> list[dict[str, object]]:
    return [
        {"path": path, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for path, data in sorted(files.items())
    ]


def bundle_digest(files: Mapping[str, bytes]) -> str:
    return sha256_hex(canonical_json({"opal_bundle": 1, "files": file_manifest(files)}))


def read_bundle_files(folder: Path, *, strict: bool = False) -> dict[str, bytes]:
    """Every regular file under ``folder`` (no symlinks), keyed by POSIX relative path.

    ``strict`` (the registry) skips nothing: a cache file dropped next to an
    approved bundle changes its digest like any other added file.
    """
    if not folder.is_dir() or not (folder / "opal.toml").is_file():
        raise BadInputError(
            f"{folder} is not a bundle folder: expected opal.toml and algorithm.py inside "
            "(opal algo init DIR --name NAME creates one)"
        )
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if not strict and (any(part in _SKIP_DIRS for part in rel.parts) or path.suffix == ".pyc"):
            continue
        if path.is_symlink():
            raise BadInputError(f"{rel.as_posix()} is a symlink; bundles hold regular files only")
        if path.is_dir():
            continue
        data = path.read_bytes()
        total += len(data)
        if total > MAX_BUNDLE_BYTES:
            raise BadInputError(f"bundle is larger than {MAX_BUNDLE_BYTES} bytes; bundles hold code, not data")
        files[rel.as_posix()] = data
    return files
