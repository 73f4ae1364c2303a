"""Where bytes live: the one module that knows a store URL is a folder, ``s3://…`` or ``https://…``.

Everything else asks a :class:`StoreLocation` for a zarr store, and for the two operations that
make writes atomic: a private temporary name to write under, and :meth:`StoreLocation.commit`
to move a finished, verified volume into place.

On a local file system ``commit`` is an ``os.rename`` (atomic).  On object storage there is no
rename: the volume is copied under its final key and the catalog row — committed only after —
is what makes it visible; readers find volumes through the catalog, never by listing.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import time
import uuid
from typing import Any, Literal
from urllib.parse import urlparse

import fsspec
import zarr
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from voxelhub.errors import AccessDenied, StoreError

TMP_DIR = ".tmp"
"""Folder (prefix) inside the store where volumes are written before they are committed."""


class StoreLocation:
    """A store root given by URL (a local path or anything fsspec opens)."""

    def __init__(self, url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None):
        raw = os.fspath(url)
        parsed = urlparse(raw)
        self.storage_options = dict(storage_options or {})
        self.is_local = parsed.scheme in ("", "file")
        if self.is_local:
            self.root = os.path.abspath(parsed.path if parsed.scheme == "file" else raw)
            self.url = self.root
            self.fs = fsspec.filesystem("file")
        else:
            self.url = raw.rstrip("/")
            self.fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)

    def __repr__(self) -> str:
        return f"StoreLocation({self.url!r})"

    def full_path(self, rel: str) -> str:
        """Path of ``rel`` inside the store, as the file system sees it."""
        return os.path.join(self.root, rel) if self.is_local else posixpath.join(self.root, rel)

    def url_of(self, rel: str) -> str:
        """URL of ``rel`` inside the store, as a user or another process would open it."""
        return self.full_path(rel) if self.is_local else posixpath.join(self.url, rel)

    def ensure_root(self) -> None:
        """Create the store's root (and temporary area) if missing."""
        if self.is_local:
            os.makedirs(os.path.join(self.root, TMP_DIR), exist_ok=True)

    def zarr_store(self, rel: str, *, read_only: bool = False) -> Store:
        """A zarr-python store for ``rel``."""
        if self.is_local:
            return LocalStore(self.full_path(rel), read_only=read_only)
        return FsspecStore.from_url(
            self.url_of(rel), storage_options=self.storage_options, read_only=read_only
        )

    def open_group(self, rel: str, mode: Literal["r", "r+"] = "r") -> zarr.Group:
        """Open an existing zarr v3 group at ``rel``; a clear StoreError if it is not there."""
        if not self.exists(rel):
            blocked = self._inaccessible_ancestor(rel)
            if blocked:
                raise AccessDenied(
                    f"cannot read {self.url_of(rel)}: no access to {blocked} (a project folder "
                    "readable only by its group); ask an admin to add you to the project"
                )
            raise StoreError(f"no volume at {self.url_of(rel)} (deleted, or never committed)")
        return zarr.open_group(
            self.zarr_store(rel, read_only=mode == "r"), mode=mode, zarr_format=3
        )

    def _inaccessible_ancestor(self, rel: str) -> str | None:
        """The first folder on the way to ``rel`` this process may not enter (local only)."""
        if not self.is_local:
            return None
        path = self.root
        for part in rel.split("/")[:-1]:
            path = os.path.join(path, part)
            if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
                return path
            if not os.path.exists(path):
                return None
        return None

    def ensure_private_dir(self, rel: str) -> None:
        """Create a folder readable by its owner only (the hub then opens it to a group)."""
        if self.is_local:
            path = self.full_path(rel)
            if not os.path.isdir(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.mkdir(path, 0o700)

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.full_path(rel)))

    def new_temporary(self, suffix: str = ".ome.zarr") -> str:
        """A fresh relative name under the temporary area, never visible to readers."""
        return posixpath.join(TMP_DIR, f"{uuid.uuid4().hex}{suffix}")

    def remove(self, rel: str) -> None:
        """Delete ``rel`` (a volume or temporary tree) if it exists."""
        path = self.full_path(rel)
        if self.is_local:
            shutil.rmtree(path, ignore_errors=True)
        elif self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def commit(self, tmp_rel: str, final_rel: str) -> None:
        """Move a finished volume from its temporary name to ``final_rel``, a path never used.

        Volumes are never replaced in place: a new version gets a new path, the catalog row is
        switched to it in one transaction, and the old tree is deleted after.  So a reader, or a
        crash, never meets a half-moved volume; a crash between the move and the catalog row
        leaves a complete but unlisted tree that :func:`voxelhub.fsck.check_store` collects.
        """
        src, dst = self.full_path(tmp_rel), self.full_path(final_rel)
        if self.fs.exists(dst):
            raise StoreError(f"refusing to overwrite {self.url_of(final_rel)}: paths are unique")
        if self.is_local:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.rename(src, dst)
            return
        self.fs.copy(src, dst, recursive=True)
        self.fs.rm(src, recursive=True)

    def copy_tree(self, src_rel: str, dst_rel: str) -> None:
        """Copy a tree inside the store (label images carried to a new volume version)."""
        src, dst = self.full_path(src_rel), self.full_path(dst_rel)
        if self.is_local:
            shutil.copytree(src, dst)
        else:
            self.fs.copy(src, dst, recursive=True)

    def move_tree(self, src_rel: str, dst_rel: str) -> None:
        """Move a tree inside the store (a rename locally)."""
        src, dst = self.full_path(src_rel), self.full_path(dst_rel)
        if self.is_local:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.rename(src, dst)
        else:
            self.fs.copy(src, dst, recursive=True)
            self.fs.rm(src, recursive=True)

    def list_volumes(self, prefix: str = "projects") -> list[str]:
        """Relative paths of every committed volume tree under ``prefix``."""
        base = self.full_path(prefix)
        if not self.fs.exists(base):
            return []
        found = self.fs.glob(posixpath.join(base, "*", "*", "*.ome.zarr"))
        root = self.full_path("")
        return sorted(os.path.relpath(str(p), root).replace(os.sep, "/") for p in found)

    def age_seconds(self, rel: str) -> float:
        """Seconds since ``rel`` was last modified (0 when unknown)."""
        try:
            return max(0.0, time.time() - _mtime(self.fs.info(self.full_path(rel))))
        except FileNotFoundError:
            return 0.0

    def clean_temporary(self, min_age_seconds: float = 3600.0) -> list[str]:
        """Remove what crashed writers left in the temporary area; return what was removed.

        Only entries older than ``min_age_seconds`` go, so a conversion running in another
        process right now keeps its temporary tree.
        """
        tmp = self.full_path(TMP_DIR)
        if not self.fs.exists(tmp):
            return []
        removed = []
        now = time.time()
        for entry in self.fs.ls(tmp, detail=True):
            name = str(entry["name"])
            if min_age_seconds > 0 and now - _mtime(entry) < min_age_seconds:
                continue
            self.fs.rm(name, recursive=True)
            removed.append(name)
        return removed


def _mtime(entry: dict[str, Any]) -> float:
    """Modification time of an fsspec listing entry (local ``mtime`` or S3 ``LastModified``)."""
    value = entry.get("mtime") or entry.get("LastModified") or entry.get("created")
    if value is None:
        return time.time()  # unknown age: treat as new, never delete what may be in use
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)
