"""Where bytes live: one small class per place, chosen from the URL by :func:`open_location`.

=====================  ==========================================================================
``LocalLocation``      a folder on this machine (``/data/store``, ``file:///data/store``)
``FsspecLocation``     anything fsspec opens (``s3://bucket/store``, ``gs://…``, ``memory://…``)
``ServiceLocation``    the data service (``https://hub/services/voxelhub-data/``): every read goes
                       through a server that checks the caller's project and audits it
=====================  ==========================================================================

Everything else asks a :class:`Location` for a zarr store, and for the operations that make
writes atomic: a private temporary name to write under, and :meth:`Location.commit` to move a
finished, verified volume into place.  No code outside ``store/`` asks which kind it holds.

On a local file system ``commit`` is an ``os.rename`` (atomic).  On object storage there is no
rename: the volume is copied under its final key and the catalog row — committed only after —
is what makes it visible; readers find volumes through the catalog, never by listing.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Mapping
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import quote, urlparse

import fsspec
import zarr
from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from voxelhub.errors import AccessDenied, StoreError

TMP_DIR = ".tmp"
"""Folder (prefix) inside the store where volumes are written before they are committed."""

SERVICE_PREFIX = "/services/voxelhub-data"
"""Path under which the hub's proxy routes the data service."""


@runtime_checkable
class Location(Protocol):
    """A store root: what readers and writers of volumes need from the place bytes live."""

    url: str
    storage_options: dict[str, Any]

    def url_of(self, rel: str) -> str:
        """URL of ``rel`` inside the store, as a user or another process would open it."""

    def catalog_file(self) -> str | None:
        """Where an embedded (SQLite) catalog of this store lives; None: give a catalog URL."""

    def zarr_store(self, rel: str, *, read_only: bool = False) -> Store:
        """A zarr-python store for ``rel``."""

    def open_group(self, rel: str, mode: Literal["r", "r+"] = "r") -> zarr.Group:
        """Open an existing zarr v3 group; a clear StoreError/AccessDenied if it cannot."""

    def exists(self, rel: str) -> bool: ...

    def ensure_root(self) -> None:
        """Create the store's root (and temporary area) if missing."""

    def ensure_private_dir(self, rel: str) -> None:
        """Create a folder readable by its owner only (where the location has folders)."""

    def new_temporary(self, suffix: str = ".ome.zarr") -> str: ...

    def remove(self, rel: str) -> None: ...

    def commit(self, tmp_rel: str, final_rel: str) -> None: ...

    def copy_tree(self, src_rel: str, dst_rel: str) -> None: ...

    def move_tree(self, src_rel: str, dst_rel: str) -> None: ...

    def list_volumes(self, prefix: str = "projects") -> list[str]: ...

    def list_temporary(self) -> list[str]: ...

    def age_seconds(self, rel: str) -> float: ...

    def clean_temporary(self, min_age_seconds: float = 3600.0) -> list[str]: ...

    def presign(self, rel: str, seconds: int) -> str | None:
        """A URL that reads key ``rel`` without credentials for ``seconds`` (object storage);
        None where the location cannot give one."""


def open_location(
    url: str | os.PathLike[str] | Location, storage_options: dict[str, Any] | None = None
) -> Location:
    """The :class:`Location` for a store URL: the only place that looks at the scheme.

    A path or ``file://`` URL is a local folder; ``http(s)://`` is the data service (plain
    HTTP object stores are not supported: use their S3 API); everything else goes to fsspec.
    """
    if isinstance(url, Location):
        return url
    raw = os.fspath(url)
    scheme = urlparse(raw).scheme
    if scheme in ("", "file"):
        return LocalLocation(raw)
    if scheme in ("http", "https"):
        return ServiceLocation(raw, storage_options)
    return FsspecLocation(raw, storage_options)


class _FsspecTree:
    """Shared by the locations that hold a tree of files (local or object storage)."""

    url: str
    root: str
    fs: Any
    storage_options: dict[str, Any]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.url == self.url

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.url))

    def full_path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def url_of(self, rel: str) -> str:
        return posixpath.join(self.url, rel)

    def catalog_file(self) -> str | None:
        return None

    def exists(self, rel: str) -> bool:
        return bool(self.fs.exists(self.full_path(rel)))

    def zarr_store(self, rel: str, *, read_only: bool = False) -> Store:
        return FsspecStore.from_url(
            self.url_of(rel), storage_options=self.storage_options, read_only=read_only
        )

    def open_group(self, rel: str, mode: Literal["r", "r+"] = "r") -> zarr.Group:
        if not self.exists(rel):
            self._raise_missing(rel)
        return zarr.open_group(
            self.zarr_store(rel, read_only=mode == "r"), mode=mode, zarr_format=3
        )

    def _raise_missing(self, rel: str) -> None:
        raise StoreError(f"no volume at {self.url_of(rel)} (deleted, or never committed)")

    def ensure_root(self) -> None:
        """Object stores have no folders to create."""

    def ensure_private_dir(self, rel: str) -> None:
        """Object stores have no folders; access is the bucket policy's (or the service's)."""

    def new_temporary(self, suffix: str = ".ome.zarr") -> str:
        """A fresh relative name under the temporary area, never visible to readers."""
        return posixpath.join(TMP_DIR, f"{uuid.uuid4().hex}{suffix}")

    def remove(self, rel: str) -> None:
        """Delete ``rel`` (a volume or temporary tree) if it exists."""
        path = self.full_path(rel)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def commit(self, tmp_rel: str, final_rel: str) -> None:
        """Move a finished volume from its temporary name to ``final_rel``, a path never used.

        Volumes are never replaced in place: a new version gets a new path, the catalog row is
        switched to it in one transaction, and the old tree is deleted after.  So a reader, or a
        crash, never meets a half-moved volume; a crash between the move and the catalog row
        leaves a complete but unlisted tree that :func:`voxelhub.fsck.check_store` collects.
        """
        if self.exists(final_rel):
            raise StoreError(f"refusing to overwrite {self.url_of(final_rel)}: paths are unique")
        self.move_tree(tmp_rel, final_rel)

    def copy_tree(self, src_rel: str, dst_rel: str) -> None:
        """Copy a tree inside the store (label images carried to a new volume version)."""
        self.fs.copy(self.full_path(src_rel), self.full_path(dst_rel), recursive=True)

    def move_tree(self, src_rel: str, dst_rel: str) -> None:
        """Move a tree inside the store: copy, then delete (object stores cannot rename)."""
        src, dst = self.full_path(src_rel), self.full_path(dst_rel)
        self.fs.copy(src, dst, recursive=True)
        self.fs.rm(src, recursive=True)

    def list_volumes(self, prefix: str = "projects") -> list[str]:
        """Relative paths of every committed volume tree under ``prefix``."""
        base = self.full_path(prefix)
        if not self.fs.exists(base):
            return []
        found = self.fs.glob(posixpath.join(base, "*", "*", "*.ome.zarr"))
        root = self.full_path("").rstrip("/")
        return sorted(
            posixpath.relpath("/" + str(p).lstrip("/"), "/" + root.lstrip("/")) for p in found
        )

    def list_temporary(self) -> list[str]:
        """What sits in the temporary area now (in-flight or crashed writes)."""
        tmp = self.full_path(TMP_DIR)
        if not self.fs.exists(tmp):
            return []
        return [str(p) for p in self.fs.ls(tmp, detail=False)]

    def age_seconds(self, rel: str) -> float:
        """Seconds since ``rel`` was last modified (0 when unknown)."""
        try:
            return max(0.0, time.time() - _mtime(self.fs.info(self.full_path(rel))))
        except FileNotFoundError:
            return 0.0

    def presign(self, rel: str, seconds: int) -> str | None:
        """A short-lived URL for key ``rel`` (``s3fs``'s presigned GET); None where the file
        system signs nothing (a local folder, most others)."""
        try:
            return str(self.fs.sign(self.full_path(rel), expiration=int(seconds)))
        except NotImplementedError:
            return None

    def key_size(self, rel: str) -> int:
        """Size in bytes of key ``rel``; FileNotFoundError, or IsADirectoryError for a prefix."""
        info = self.fs.info(self.full_path(rel))
        if info.get("type") == "directory":
            raise IsADirectoryError(rel)
        return int(info["size"])

    def read_range(self, rel: str, start: int, stop: int) -> bytes:
        """Bytes ``start:stop`` of key ``rel``."""
        return bytes(self.fs.cat_file(self.full_path(rel), start=start, end=stop))

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


class LocalLocation(_FsspecTree):
    """A store folder on this machine; commits are ``os.rename`` (atomic)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        raw = os.fspath(path)
        parsed = urlparse(raw)
        self.root = os.path.abspath(parsed.path if parsed.scheme == "file" else raw)
        self.url = self.root
        self.storage_options: dict[str, Any] = {}
        self.fs = fsspec.filesystem("file")

    def __reduce__(self) -> tuple[Any, ...]:
        return (LocalLocation, (self.root,))

    def full_path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def url_of(self, rel: str) -> str:
        return self.full_path(rel)

    def catalog_file(self) -> str | None:
        from voxelhub.catalog import CATALOG_FILE

        return os.path.join(self.root, CATALOG_FILE)

    def zarr_store(self, rel: str, *, read_only: bool = False) -> Store:
        return LocalStore(self.full_path(rel), read_only=read_only)

    def _raise_missing(self, rel: str) -> None:
        blocked = self._inaccessible_ancestor(rel)
        if blocked:
            raise AccessDenied(
                f"cannot read {self.url_of(rel)}: no access to {blocked} (a project folder "
                "readable only by its group, or the data service's store); ask an admin to add "
                "you to the project"
            )
        super()._raise_missing(rel)

    def _inaccessible_ancestor(self, rel: str) -> str | None:
        """The first folder on the way to ``rel`` this process may not enter."""
        path = self.root
        if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
            return path
        for part in rel.split("/")[:-1]:
            path = os.path.join(path, part)
            if os.path.isdir(path) and not os.access(path, os.R_OK | os.X_OK):
                return path
            if not os.path.exists(path):
                return None
        return None

    def ensure_root(self) -> None:
        os.makedirs(os.path.join(self.root, TMP_DIR), exist_ok=True)

    def ensure_private_dir(self, rel: str) -> None:
        path = self.full_path(rel)
        if not os.path.isdir(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.mkdir(path, 0o700)

    def remove(self, rel: str) -> None:
        shutil.rmtree(self.full_path(rel), ignore_errors=True)

    def copy_tree(self, src_rel: str, dst_rel: str) -> None:
        shutil.copytree(self.full_path(src_rel), self.full_path(dst_rel))

    def move_tree(self, src_rel: str, dst_rel: str) -> None:
        dst = self.full_path(dst_rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        os.rename(self.full_path(src_rel), dst)

    def list_volumes(self, prefix: str = "projects") -> list[str]:
        base = self.full_path(prefix)
        if not os.path.isdir(base):
            return []
        found = self.fs.glob(posixpath.join(base, "*", "*", "*.ome.zarr"))
        return sorted(os.path.relpath(str(p), self.root).replace(os.sep, "/") for p in found)


class FsspecLocation(_FsspecTree):
    """A store on object storage or any other fsspec file system (``s3://bucket/store``)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
        self._pid = os.getpid()

    def __reduce__(self) -> tuple[Any, ...]:
        return (FsspecLocation, (self.url, self.storage_options))

    @property
    def fs(self) -> Any:
        """The file system, made again in a forked child (ingest's workers): an async one such
        as s3fs runs on its maker's event loop and refuses a child ("not fork-safe")."""
        if self._pid != os.getpid():
            self._fs, self.root = fsspec.core.url_to_fs(self.url, **self.storage_options)
            self._pid = os.getpid()
        return self._fs


class ServiceLocation:
    """The store as the data service serves it: reads only, each one authorised and audited.

    Keys are fetched over HTTP(S) with the caller's hub token (``$JUPYTERHUB_API_TOKEN`` in a
    hub kernel, passed on to its Dask workers inside the task graph), by fsspec's HTTP file
    system, so a sharded array's inner chunks arrive as range requests: those of one partial
    shard read merged and concurrent (:mod:`voxelhub.store.service_store`).  Writes (labels,
    feature tables) go through the service's API, not through this location.
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        options = dict(storage_options or {})
        self.token: str = str(
            options.pop("token", "") or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        )
        self.verify: str | bool = options.pop("verify", True)
        self.url = url.rstrip("/")
        self.storage_options = options

    def __repr__(self) -> str:
        return f"ServiceLocation({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            ServiceLocation,
            (self.url, {**self.storage_options, "token": self.token, "verify": self.verify}),
        )

    def headers(self) -> dict[str, str]:
        """What every request carries: the caller's hub token."""
        return {"Authorization": f"token {self.token}"} if self.token else {}

    def api_url(self, path: str) -> str:
        return f"{self.url}/api/{path.lstrip('/')}"

    def url_of(self, rel: str) -> str:
        return self.api_url("store/" + quote(rel.strip("/")))

    def catalog_file(self) -> str | None:
        return None

    def presign(self, rel: str, seconds: int) -> str | None:
        """The service decides that (``DataService.presign_seconds``); a client cannot."""
        return None

    def _ssl(self) -> ssl.SSLContext | None:
        """TLS for aiohttp and urllib: the hub's own CA file, no verification, or the default."""
        if self.verify is False:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        if isinstance(self.verify, str):
            return ssl.create_default_context(cafile=self.verify)
        return None

    def request(
        self,
        path: str,
        *,
        params: Mapping[str, str | list[str]] | None = None,
        method: str = "GET",
        data: bytes | None = None,
        timeout: float = 120,
    ) -> tuple[int, bytes, dict[str, str]]:
        """One call to the service's API: (status, body, lower-case headers); never raises on
        an HTTP error status, only when the service cannot be reached.  A list parameter is
        sent once per value."""
        query = urllib.parse.urlencode(params, doseq=True) if params else ""
        url = self.api_url(path) + ("?" + query if query else "")
        headers = self.headers()
        if data is not None:
            headers["Content-Type"] = "application/octet-stream"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        opener = urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=self._ssl()), _RedirectWithoutCredentials
        )
        try:
            with opener.open(req, timeout=timeout) as response:
                head = {k.lower(): v for k, v in response.headers.items()}
                return int(response.status), response.read(), head
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read(), {k.lower(): v for k, v in exc.headers.items()}
        except urllib.error.URLError as exc:
            raise StoreError(f"cannot reach the data service at {self.url}: {exc.reason}") from exc

    def zarr_store(self, rel: str, *, read_only: bool = False) -> Store:
        if not read_only:
            raise AccessDenied(
                f"{self.url} serves volumes read-only; write labels and tables through its API"
            )
        from voxelhub.store.service_store import ServiceStore, install

        install()  # a partly read shard's inner chunks in a few concurrent requests, not one each
        options: dict[str, Any] = {"headers": self.headers(), **self.storage_options}
        context = self._ssl()
        if context is not None:
            options["ssl"] = context
        return ServiceStore(
            FsspecStore.from_url(self.url_of(rel), storage_options=options, read_only=True)
        )

    def open_group(self, rel: str, mode: Literal["r", "r+"] = "r") -> zarr.Group:
        if mode != "r":
            self.zarr_store(rel)  # raises: read-only
        status, message = self._head(rel)
        if status in (401, 403):
            raise AccessDenied(f"{self.url} refused {rel}: {message}")
        if status == 404:
            raise StoreError(f"no volume at {self.url_of(rel)}: {message}")
        if status >= 400:
            raise StoreError(f"{self.url} answered {status} for {rel}: {message}")
        return zarr.open_group(self.zarr_store(rel, read_only=True), mode="r", zarr_format=3)

    def _head(self, rel: str) -> tuple[int, str]:
        """Fetch ``rel`` (a key, or a group's metadata): (HTTP status, the service's message)."""
        key = rel if posixpath.basename(rel) == "zarr.json" else posixpath.join(rel, "zarr.json")
        status, body, _ = self.request("store/" + quote(key.strip("/")), timeout=30)
        return status, "ok" if status < 400 else service_message(body, status)

    def exists(self, rel: str) -> bool:
        return self._head(rel)[0] == 200

    def _refuse(self) -> AccessDenied:
        return AccessDenied(
            f"{self.url} is read-only for kernels: ingest, labels and fsck run at the server"
        )

    def ensure_root(self) -> None:
        raise self._refuse()

    def ensure_private_dir(self, rel: str) -> None:
        raise self._refuse()

    def new_temporary(self, suffix: str = ".ome.zarr") -> str:
        raise self._refuse()

    def remove(self, rel: str) -> None:
        raise self._refuse()

    def commit(self, tmp_rel: str, final_rel: str) -> None:
        raise self._refuse()

    def copy_tree(self, src_rel: str, dst_rel: str) -> None:
        raise self._refuse()

    def move_tree(self, src_rel: str, dst_rel: str) -> None:
        raise self._refuse()

    def list_volumes(self, prefix: str = "projects") -> list[str]:
        raise self._refuse()

    def list_temporary(self) -> list[str]:
        return []

    def age_seconds(self, rel: str) -> float:
        return 0.0

    def clean_temporary(self, min_age_seconds: float = 3600.0) -> list[str]:
        raise self._refuse()


class _RedirectWithoutCredentials(urllib.request.HTTPRedirectHandler):
    """Follow a redirect, but never send the hub token to another origin.

    urllib copies every header onto the redirected request; the data service may answer a key
    with ``307`` to a presigned object-storage URL, which must not receive the caller's token.
    (aiohttp, under :class:`ServiceStore`, already drops ``Authorization`` across origins.)
    """

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
            new.remove_header("Cookie")
        return new


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlparse(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


def service_message(body: bytes, status: int) -> str:
    """The data service's JSON ``message`` of an error answer (or a plain description)."""
    try:
        return str(json.loads(body).get("message") or f"HTTP {status}")
    except (ValueError, AttributeError):
        return f"HTTP {status}"


def _mtime(entry: dict[str, Any]) -> float:
    """Modification time of an fsspec listing entry (local ``mtime`` or S3 ``LastModified``)."""
    value = entry.get("mtime") or entry.get("LastModified") or entry.get("created")
    if value is None:
        return time.time()  # unknown age: treat as new, never delete what may be in use
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    return float(value)
