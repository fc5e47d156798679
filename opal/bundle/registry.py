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
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise BadInputError(f"{digest!r} is not a bundle digest (64 hex characters)")
        return self.root / digest

    def store(self, bundle: Bundle) -> Path:
        """Write once; a digest's folder never changes after it is stored."""
        target = self.path(bundle.digest)
        if target.exists():
            return target
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=".incoming-"))
        try:
            for rel, data in bundle.files.items():
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
