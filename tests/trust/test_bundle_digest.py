"""The bundle digest: SHA-256 over RFC 8785 canonical {path, size, sha256} of every file."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from trust_world import PD

from opal.bundle.digest import bundle_digest, file_manifest, read_bundle_files
from opal.bundle.registry import Bundle, Registry
from opal.canonical import canonical_json
from opal.errors import TrustError

FILES = {"opal.toml": b"name = 'x'\n", "algorithm.py": b"def contributions(data, params):\n    return data\n"}


def test_digest_is_sha256_of_the_canonical_file_manifest() -> None:
    manifest = {"opal_bundle": 1, "files": [
        {"path": p, "size": len(d), "sha256": hashlib.sha256(d).hexdigest()} for p, d in sorted(FILES.items())
    ]}
    assert bundle_digest(FILES) == hashlib.sha256(canonical_json(manifest)).hexdigest()
    assert file_manifest(FILES)[0]["path"] == "algorithm.py"


def test_digest_does_not_depend_on_file_order() -> None:
    assert bundle_digest(dict(reversed(list(FILES.items())))) == bundle_digest(FILES)


@pytest.mark.parametrize(
    "change",
    [
        lambda f: {**f, "algorithm.py": f["algorithm.py"][:-1] + b" "},  # one byte
        lambda f: {**f, "helper.py": b""},  # an added (even empty) file
        lambda f: {"opal.toml": f["opal.toml"], "algo.py": f["algorithm.py"]},  # a rename
        lambda f: {**f, "algorithm.py": f["algorithm.py"] + b"\n"},  # a size change
    ],
    ids=["byte", "added", "renamed", "size"],
)
def test_any_change_changes_the_digest(change) -> None:  # type: ignore[no-untyped-def]
    assert bundle_digest(change(FILES)) != bundle_digest(FILES)


def test_registry_is_content_addressed_and_read_only(tmp_path: Path) -> None:
    bundle = Bundle.from_folder(PD)
    registry = Registry(tmp_path)
    folder = registry.store(bundle)
    assert folder.name == bundle.digest
    assert all(not (p.stat().st_mode & 0o222) for p in folder.iterdir())
    loaded = registry.load(bundle.digest)
    assert loaded.files == bundle.files and loaded.digest == bundle.digest


def test_authoring_folder_skips_caches_but_the_registry_does_not(tmp_path: Path) -> None:
    bundle = Bundle.from_folder(PD)
    registry = Registry(tmp_path)
    folder = registry.store(bundle)
    folder.chmod(0o755)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "algorithm.cpython-311.pyc").write_bytes(b"evil")
    assert bundle_digest(read_bundle_files(folder)) == bundle.digest
    with pytest.raises(TrustError, match="changed after submission"):
        registry.load(bundle.digest)


def test_symlink_in_the_registry_is_refused(tmp_path: Path) -> None:
    bundle = Bundle.from_folder(PD)
    registry = Registry(tmp_path)
    folder = registry.store(bundle)
    folder.chmod(0o755)
    (folder / "data.py").symlink_to("/etc/hostname")
    with pytest.raises(TrustError, match="symlink"):
        registry.load(bundle.digest)
