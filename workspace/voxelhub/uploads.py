"""Client side of uploads: a zip (or a folder, zipped on the fly) sent to the data service.

The service checks and ingests it in the background (``extensions/voxelhub_data/uploads.py``);
:class:`UploadReport` is its answer, typed: state, progress counts and, at the end, the volumes
written and every file rejected with the reason.
"""

from __future__ import annotations

import enum
import io
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any

from voxelhub.errors import VoxelHubError


class UploadFailed(VoxelHubError):
    """The service could not ingest the upload; the message is its reason."""


class UploadState(enum.Enum):
    RECEIVED = "received"
    CHECKING = "checking"
    INGESTING = "ingesting"
    DONE = "done"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (UploadState.DONE, UploadState.FAILED)


@dataclass(frozen=True)
class UploadReport:
    """One upload as the service reports it."""

    id: str
    project: str
    user: str
    state: UploadState
    nbytes: int = 0
    files: int = 0
    checked: int = 0
    volumes: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    message: str = ""
    created: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UploadReport:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**{**known, "state": UploadState(data["state"])})

    def summary(self) -> str:
        lines = [f"upload {self.id} into {self.project}: {self.state.value}; {self.message}"]
        lines += [f"  rejected {r['file']}: {r['reason']}" for r in self.rejected[:50]]
        return "\n".join(lines)


def zip_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a zip file, or of a folder zipped in memory (its files, relative names)."""
    path = os.fspath(path)
    if os.path.isdir(path):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    if os.path.isfile(full) and not os.path.islink(full):
                        archive.write(full, os.path.relpath(full, path))
        return buf.getvalue()
    if not zipfile.is_zipfile(path):
        raise UploadFailed(f"{path} is neither a folder nor a zip archive")
    with open(path, "rb") as f:
        return f.read()
