"""The cohort package format: a folder (local or ``s3://``) that describes itself.

::

    cohort.json                         manifest (format, version, provenance, rows, checksums)
    volumes/<volume_uid>.ome.zarr/...   each volume's OME-Zarr tree as stored, label images in it
    features/results.parquet            the feature rows of these volumes (when there are any)
    features/settings/<hash>.json       the settings each row was computed with

``cohort.json`` lists every other object with its SHA-256; an import checks all of them before
it writes anything.  The checksums find damage and tampering with the objects; whoever can
rewrite the manifest too can pass anything off, so the manifest's own SHA-256 is printed at
export, for the receiving site to compare with what the sender tells it out of band.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from voxelhub.cohort.errors import TamperedPackage, UnsupportedPackage

FORMAT = "voxelhub-cohort"
VERSION = 1
MANIFEST = "cohort.json"
_CHUNK = 1 << 20


@dataclass
class Package:
    """A package's folder through fsspec (``/path`` or ``s3://bucket/prefix``)."""

    fs: fsspec.AbstractFileSystem
    root: str

    @classmethod
    def at(cls, url: str, storage_options: dict[str, Any] | None = None) -> Package:
        fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        fs.invalidate_cache()  # an object store's listing and ETags from an earlier look
        return cls(fs, root.rstrip("/"))

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def put(self, rel: str, data: bytes) -> str:
        """Write one object (its folders made first: local folders are private, 0700)."""
        path = self.path(rel)
        parent = posixpath.dirname(path)
        if isinstance(self.fs, LocalFileSystem):
            os.makedirs(parent, mode=0o700, exist_ok=True)
        else:
            self.fs.makedirs(parent, exist_ok=True)
        self.fs.pipe_file(path, data)
        return hashlib.sha256(data).hexdigest()

    def files(self) -> list[str]:
        """Every object in the package, relative, sorted."""
        if not self.fs.exists(self.root):
            return []
        found = self.fs.find(self.root)
        return sorted(posixpath.relpath(f, self.root) for f in found)

    def sha256(self, rel: str) -> str:
        digest = hashlib.sha256()
        with self.fs.open(self.path(rel), "rb") as f:
            while block := f.read(_CHUNK):
                digest.update(block)
        return digest.hexdigest()

    def read_manifest(self) -> dict[str, Any]:
        try:
            with self.fs.open(self.path(MANIFEST), "rb") as f:
                manifest = json.loads(f.read())
        except FileNotFoundError:
            raise UnsupportedPackage(
                f"no {MANIFEST} in {self.root}: not a VoxelHub cohort package"
            ) from None
        except ValueError as exc:
            raise TamperedPackage(f"{MANIFEST} is not valid JSON: {exc}", obj=MANIFEST) from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise UnsupportedPackage(f"{self.root}/{MANIFEST} is not a {FORMAT} manifest")
        objects, volumes = manifest.get("objects"), manifest.get("volumes")
        if not isinstance(objects, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in objects.items()
        ):
            raise UnsupportedPackage(f"{MANIFEST}: 'objects' must map each object to its SHA-256")
        if not isinstance(volumes, list):
            raise UnsupportedPackage(f"{MANIFEST}: 'volumes' must be a list")
        if manifest.get("version") != VERSION:
            raise UnsupportedPackage(
                f"cohort package version {manifest.get('version')!r}; this VoxelHub reads "
                f"version {VERSION}"
            )
        return manifest

    def verify(self, manifest: dict[str, Any]) -> None:
        """Every listed object present with its SHA-256, nothing unlisted; else the first wrong
        object named in :class:`TamperedPackage`."""
        listed: dict[str, str] = manifest.get("objects") or {}
        present = set(self.files()) - {MANIFEST}
        for rel in sorted(listed):
            if rel not in present:
                raise TamperedPackage(
                    f"object {rel} is listed in the manifest but missing", obj=rel
                )
            if self.sha256(rel) != listed[rel]:
                raise TamperedPackage(
                    f"object {rel} does not match its SHA-256 in the manifest (changed or "
                    "damaged after export)",
                    obj=rel,
                )
        for rel in sorted(present - set(listed)):
            raise TamperedPackage(
                f"object {rel} is in the package but not in the manifest", obj=rel
            )
