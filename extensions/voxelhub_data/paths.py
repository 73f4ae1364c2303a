"""Turning a requested store key into a file the service may open — or a clear refusal.

Every path a client sends is untrusted.  It is checked as text first (no ``..``, no
percent-escapes left after decoding, no backslash, NUL or absolute path), must name a key
inside one volume (``projects/<project>/<name>.ome.zarr/<key>``), and is then resolved on disk
without following symbolic links out of that volume: a link planted in the store is refused.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

_PROJECT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
_VOLUME = re.compile(
    rf"^projects/({_PROJECT})/([A-Za-z0-9._-]+/[A-Za-z0-9._-]+\.ome\.zarr)"
    r"(?:/(.*))?$"
)
_KEY_PART = re.compile(r"^[A-Za-z0-9._-]+$")


class BadPath(ValueError):
    """The requested path is not a key inside a volume."""


@dataclass(frozen=True)
class VolumeKey:
    """A validated request: the volume's store path, its project and the key inside it."""

    project: str
    volume_path: str
    key: str

    @property
    def is_labels(self) -> bool:
        return self.key == "labels" or self.key.startswith("labels/")


def parse(path: str) -> VolumeKey:
    """Validate ``path`` (already URL-decoded once) as a key inside a volume."""
    if not path or "\x00" in path or "\\" in path or path.startswith("/") or "%" in path:
        raise BadPath("a store key is a relative path of letters, digits, '.', '_', '-' and '/'")
    match = _VOLUME.match(path)
    if match is None:
        raise BadPath("a store key starts with projects/<project>/<group>/<volume>.ome.zarr")
    project, name, key = match.group(1), match.group(2), match.group(3) or ""
    parts = key.split("/") if key else []
    if any(p in ("", ".", "..") or not _KEY_PART.match(p) for p in parts):
        raise BadPath("'.', '..' and empty parts are not allowed in a store key")
    return VolumeKey(project, f"projects/{project}/{name}", key)


def project_name(text: str) -> str:
    """``text`` if it can name a project (a store folder ``projects/<name>``), else BadPath."""
    if not re.fullmatch(_PROJECT, text):
        raise BadPath(
            f"{text[:80]!r} is not a project name: 1-64 letters, digits, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return text


def open_key(root: str, request: VolumeKey) -> int:
    """Open the key's file read-only, refusing any symbolic link on the way; return the fd.

    Walks from the volume folder down with ``O_NOFOLLOW`` at every step (``openat``), so a link
    planted anywhere in the volume is refused even if it points inside the store.
    """
    flags_dir = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    parts = request.volume_path.split("/") + (request.key.split("/") if request.key else [])
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, flags_dir, dir_fd=fd)
            os.close(fd)
            fd = nxt
        leaf = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(leaf).st_mode):
        os.close(leaf)
        raise IsADirectoryError(request.key or request.volume_path)
    return leaf


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class BadRange(ValueError):
    """A Range header this service cannot satisfy (answered 416)."""


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, stop)`` for one ``bytes=`` range (stop exclusive), None for the whole file.

    One range per request (what zarr sends); several ranges, a start past the end or an empty
    suffix are refused.  An end past the file is clamped, as RFC 9110 says.
    """
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        raise BadRange(f"unsupported Range {header[:80]!r}: one 'bytes=start-end' range only")
    first, last = match.groups()
    if len(first) > 19 or len(last) > 19:
        raise BadRange("Range values are too large")
    if first == "" and last == "":
        raise BadRange("empty Range")
    if first == "":
        n = int(last)
        if n == 0:
            raise BadRange("a suffix range of 0 bytes")
        return max(0, size - n), size
    start = int(first)
    stop = size if last == "" else min(size, int(last) + 1)
    if start >= size or stop <= start:
        raise BadRange(f"range {header!r} is outside the {size}-byte object")
    return start, stop
