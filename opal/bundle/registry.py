"""Content-addressed bundle registry: ``registry/<digest>/<files>``."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from opal.bundle.digest import bundle_digest, read_bundle_files
from opal.bundle.manifest import MANIFEST_FILE, SOURCE_FILE, Manifest
from opal.db import Database
from opal.errors import BadInputError, TrustError

__all__ = ["Bundle", "Registry"]

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Bundle:
    """A bundle's exact bytes and the digest they hash to."""

    digest: str
    files: Mapping[str, bytes]
    manifest: Manifest

    @classmethod
    def from_files(cls, files: Mapping[str, bytes], *, where: str = "bundle") -> Bundle:
        if MANIFEST_FILE not in files:
            raise BadInputError(f"{where}: no {MANIFEST_FILE}; create one (opal algo init shows the format)")
        if SOURCE_FILE not in files:
            raise BadInputError(f"{where}: no {SOURCE_FILE}; the algorithm's code goes there")
        manifest = Manifest.parse(files[MANIFEST_FILE], where=f"{where}/{MANIFEST_FILE}")
        return cls(digest=bundle_digest(files), files=dict(files), manifest=manifest)

    @classmethod
    def from_folder(cls, folder: Path) -> Bundle:
        return cls.from_files(read_bundle_files(folder), where=str(folder))

    @property
    def source(self) -> str:
        try:
            return self.files[SOURCE_FILE].decode("utf-8")
        except UnicodeDecodeError:
            raise BadInputError(f"{SOURCE_FILE} is not UTF-8 text") from None

    @property
    def ref(self) -> str:
        return f"{self.manifest.name}@{self.manifest.version}"


class Registry:
    """Bundles by digest: a write-once folder per digest on this node, and the
    same bytes in the shared database, so another worker node (one
    PostgreSQL, several machines) can materialise a bundle submitted
    elsewhere. Either copy is untrusted: ``load`` re-hashes what it runs."""

    def __init__(self, root: Path, db: Database | None = None) -> None:
        self.root = root
        self.db = db

    def path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise BadInputError(f"{digest!r} is not a bundle digest (64 hex characters)")
        return self.root / digest

    def store(self, bundle: Bundle) -> Path:
        """Write once; a digest's folder never changes after it is stored."""
        if self.db is not None:
            with self.db.transaction() as tx:
                for rel, data in bundle.files.items():
                    tx.execute(
                        "INSERT OR IGNORE INTO bundle_files(digest, path, data) VALUES (?,?,?)",
                        (bundle.digest, rel, data),
                    )
        return self._write(bundle.digest, bundle.files)

    def _write(self, digest: str, files: Mapping[str, bytes]) -> Path:
        target = self.path(digest)
        if target.exists():
            return target
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".incoming-"))
        try:
            for rel, data in files.items():
                if rel.startswith("/") or ".." in Path(rel).parts:
                    raise TrustError(f"bundle {digest[:12]} holds a file path outside its folder")
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(data)
                os.chmod(dest, 0o444)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    def load(self, digest: str) -> Bundle:
        """Load the bytes stored under ``digest`` and recompute the digest from them.

        Raises TrustError if the stored bytes no longer hash to ``digest``.
        """
        folder = self.path(digest)
        if not folder.is_dir() and self.db is not None:
            # submitted on another node sharing this database: materialise it here
            rows = self.db.query("SELECT path, data FROM bundle_files WHERE digest = ?", (digest,))
            if rows:
                self._write(digest, {str(r["path"]): bytes(r["data"]) for r in rows})
        if not folder.is_dir():
            raise TrustError(f"bundle {digest[:12]} is not in this node's registry; submit it first")
        try:
            files = read_bundle_files(folder, strict=True)
        except BadInputError as exc:
            raise TrustError(f"bundle {digest[:12]} in the registry is unusable: {exc.message}") from None
        found = bundle_digest(files)
        if found != digest:
            raise TrustError(
                f"bundle {digest[:12]} was changed after submission: its files now hash to "
                f"{found[:12]}; resubmit and have it reviewed again"
            )
        # built from the very bytes just hashed, so what runs is what was approved
        return Bundle.from_files(files, where=f"bundle {digest[:12]}")
