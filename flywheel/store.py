"""The model store: versioned directories, each complete with a manifest, published atomically.

A version is written into a temporary directory beside the store, every file and the manifest
fsynced, then renamed into place: readers see a whole version or none. The manifest lists the
sha256 of every file, so a reader can verify a version before it touches a live engine.
Leftover temporary directories (a writer killed mid-way) are removed when the store opens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"
_VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class StoreError(RuntimeError):
    """A version is missing, malformed or does not match its manifest."""


@dataclass(frozen=True)
class ManifestFile:
    path: str
    sha256: str
    size: int


@dataclass
class Manifest:
    version: str
    parent: str
    base_model: str
    kind: str
    created_at: float
    files: list[ManifestFile] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, object] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        raw = json.loads(text)
        raw["files"] = [ManifestFile(**entry) for entry in raw.get("files", [])]
        return cls(**raw)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelStore:
    """Versions under `root/<version>/`; `publish` is the only writer and is atomic."""

    def __init__(self, root: Path, readonly: bool = False) -> None:
        """`readonly`: a reader (a serving replica) that must never touch a writer's temporary directories."""
        self.root = Path(root)
        if readonly:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in self.root.glob(f"{_TMP_PREFIX}*"):
            log.warning("removing a half-written version %s (its writer stopped mid-way)", leftover.name)
            shutil.rmtree(leftover, ignore_errors=True)

    def path(self, version: str) -> Path:
        """Where `version` lives; a name that is not plain, or a directory that leads out of the store, is refused.

        Checked on every read, not only on publish: a version name comes from events and files
        (PolicyPublished, rollout.json) that anyone who reaches the broker can write.
        """
        if not isinstance(version, str) or not _VERSION_NAME.match(version):
            raise StoreError(f"version name {version!r} is not a plain name")
        path = self.root / version
        if path.is_symlink() and not path.resolve().is_relative_to(self.root.resolve()):
            raise StoreError(f"version {version} leads out of the store")
        return path

    def publish(
        self,
        version: str,
        write: Callable[[Path], None],
        *,
        parent: str,
        base_model: str,
        kind: str,
        metrics: dict[str, float] | None = None,
        extra: dict[str, object] | None = None,
    ) -> Manifest:
        """Call `write(tmp_dir)` to fill a new version, then make it visible in one rename."""
        target = self.path(version)
        if target.exists():
            raise StoreError(f"version {version} already exists; versions are never overwritten")
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{version}-", dir=self.root))
        try:
            write(tmp)
            files = []
            for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
                with open(path, "rb") as handle:
                    os.fsync(handle.fileno())
                files.append(ManifestFile(str(path.relative_to(tmp)), sha256_file(path), path.stat().st_size))
            manifest = Manifest(
                version=version,
                parent=parent,
                base_model=base_model,
                kind=kind,
                created_at=time.time(),
                files=files,
                metrics=dict(metrics or {}),
                extra=dict(extra or {}),
            )
            with open(tmp / MANIFEST, "w", encoding="utf-8") as handle:
                handle.write(manifest.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            for sub in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
                sub.chmod(0o755)
                _fsync_dir(sub)
            os.rename(tmp, target)
            _fsync_dir(self.root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("published %s (%s, parent %s, %d files)", version, kind, parent, len(files))
        return manifest

    def manifest(self, version: str) -> Manifest:
        path = self.path(version) / MANIFEST
        if not path.is_file():
            raise StoreError(f"version {version} is not in the store")  # no path: refusal reasons are public
        try:
            return Manifest.from_json(path.read_text(encoding="utf-8"))
        except (ValueError, TypeError, KeyError) as exc:
            raise StoreError(f"version {version}: unreadable manifest ({exc})") from exc

    def verify(self, version: str) -> Manifest:
        """The manifest, once every file it lists exists with its size and sha256."""
        manifest = self.manifest(version)
        base = self.path(version)
        for entry in manifest.files:
            path = base / entry.path
            if Path(entry.path).is_absolute() or ".." in Path(entry.path).parts:
                raise StoreError(f"version {version}: the manifest lists a file outside the version")
            if not path.is_file():
                raise StoreError(f"version {version}: {entry.path} is missing")
            if path.stat().st_size != entry.size or sha256_file(path) != entry.sha256:
                raise StoreError(f"version {version}: {entry.path} does not match its manifest")
        return manifest

    def versions(self) -> list[Manifest]:
        """Every complete version, oldest first."""
        found = []
        if not self.root.is_dir():
            return found
        for path in self.root.iterdir():
            if path.is_dir() and not path.name.startswith(".") and (path / MANIFEST).is_file():
                try:
                    found.append(self.manifest(path.name))
                except StoreError as exc:
                    log.warning("skipping %s: %s", path.name, exc)
        return sorted(found, key=lambda m: (m.created_at, m.version))

    def latest(self) -> Manifest | None:
        versions = self.versions()
        return versions[-1] if versions else None
