"""Cohort imports run by the data service: a curator sends a package, the service imports it.

On the hub only the service's account may write the store, so ``voxelhub cohort import`` from
a kernel sends the package (the folder ``voxelhub cohort export`` wrote, as a tar stream) to
``POST api/projects/<name>/cohorts``.  It is written to a private (0700) folder and unpacked
member by member (regular files and folders only, no absolute or ``..`` names, no links; files
created new, never through a link), capped in members and bytes, and handed to :func:`voxelhub.cohort.import_cohort`, which verifies every
checksum against the manifest (a tampered package is refused with the object named), refuses
identifiable data and imports.  The folder is removed whatever happens.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tarfile
from dataclasses import asdict, dataclass
from typing import Any

_COPY = 1 << 20


class CohortRefused(ValueError):
    """The upload cannot be taken as a package; the message names the problem (a 400)."""


class NotATar(CohortRefused):
    """The body is not a readable tar stream, or one holding no manifest."""


class PackageTooLarge(CohortRefused):
    """More members or bytes than the service takes in one package."""


class UnsafeMember(CohortRefused):
    """A member tarfile's ``data`` filter refuses: absolute, ``..``, a link, a device."""


@dataclass(frozen=True)
class CohortLimits:
    max_members: int
    max_bytes: int


def _safe_name(name: str) -> str:
    """``name`` as a relative path inside the package, or :class:`UnsafeMember`."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":"):
        raise UnsafeMember(f"unsafe name in the package: {name[:200]!r} (absolute or '..')")
    return "/".join(p for p in parts if p not in ("", "."))


def unpack(tar_path: str, dest: str, limits: CohortLimits) -> None:
    """Unpack the package's tar into ``dest``: every member is checked before any is written
    (regular files and folders only, no absolute or ``..`` names), files are created new
    (never through a link); a tar member holds exactly the size its header says, so the sizes
    are capped before anything is written."""
    try:
        with tarfile.open(tar_path, mode="r:*") as archive:
            members = archive.getmembers()
            if len(members) > limits.max_members:
                raise PackageTooLarge(
                    f"the package holds {len(members)} members; one may hold {limits.max_members}"
                )
            total = sum(m.size for m in members if m.isfile())
            if total > limits.max_bytes:
                raise PackageTooLarge(
                    f"the package unpacks to {total} bytes; one may unpack to {limits.max_bytes}"
                )
            for member in members:
                _safe_name(member.name)
                if not (member.isfile() or member.isdir()):
                    raise UnsafeMember(f"{member.name[:200]!r} in the package is not a file")
            for member in members:
                rel = _safe_name(member.name)
                if not rel:
                    continue
                target = os.path.join(dest, rel)
                if member.isdir():
                    os.makedirs(target, mode=0o700, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                source = archive.extractfile(member)
                assert source is not None  # a regular file
                with os.fdopen(os.open(target, flags, 0o600), "wb") as out, source:
                    shutil.copyfileobj(source, out, _COPY)
    except (tarfile.ReadError, tarfile.CompressionError, EOFError) as exc:
        raise NotATar(f"the body is not a tar stream of a cohort package: {exc}") from None
    except FileExistsError as exc:
        raise UnsafeMember(f"the package names a file twice: {exc.filename}") from None


class CohortImports:
    """A private folder where packages wait for their import, one folder per request."""

    def __init__(self, directory: str, limits: CohortLimits) -> None:
        self.directory = directory
        self.limits = limits
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)

    def new(self) -> str:
        """A new private folder; the tar is written to ``<folder>/package.tar``."""
        folder = os.path.join(self.directory, secrets.token_urlsafe(12))
        os.mkdir(folder, 0o700)
        return folder

    def discard(self, folder: str) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def run(
        self, folder: str, project: str, location: Any, catalog_url: str | None
    ) -> dict[str, Any]:
        """Unpack and import (in a worker thread); the folder goes whatever happens.  Raises
        :class:`CohortRefused` or a :class:`voxelhub.cohort.CohortError`."""
        from voxelhub.cohort import import_cohort
        from voxelhub.cohort.package import MANIFEST

        try:
            package = os.path.join(folder, "package")
            os.mkdir(package, 0o700)
            unpack(os.path.join(folder, "package.tar"), package, self.limits)
            if not os.path.isfile(os.path.join(package, MANIFEST)):
                raise NotATar(f"the tar holds no {MANIFEST} at its top: not a cohort package")
            imported = import_cohort(package, location, project=project, catalog_url=catalog_url)
            return {**asdict(imported), "summary": imported.summary()}
        finally:
            self.discard(folder)


@dataclass(frozen=True)
class ExportRequest:
    """A curator's selection for ``POST api/projects/<name>/cohort-exports``, checked."""

    modality: str | None
    text: str | None
    volumes: list[str] | None
    site: str | None


def parse_export(body: bytes) -> ExportRequest:
    """The JSON body as an :class:`ExportRequest`, or :class:`CohortRefused` naming the problem."""
    import json

    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CohortRefused(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CohortRefused('the body is a JSON object {"modality": …, "text": …, "volumes": […]}')
    unknown = sorted(set(data) - {"modality", "text", "volumes", "site"})
    if unknown:
        raise CohortRefused(f"unknown field(s) {unknown}")
    for name in ("modality", "text", "site"):
        if data.get(name) is not None and not isinstance(data[name], str):
            raise CohortRefused(f"{name} is a string")
    volumes = data.get("volumes")
    if volumes is not None and (
        not isinstance(volumes, list) or not all(isinstance(v, str) for v in volumes)
    ):
        raise CohortRefused("volumes is a list of volume UIDs")
    return ExportRequest(data.get("modality"), data.get("text"), volumes, data.get("site"))


def export_package(
    folder: str, project: str, request: ExportRequest, site: str, location: Any,
    catalog_url: str | None,
) -> tuple[bytes, dict[str, Any]]:  # fmt: skip
    """Export the selection into ``folder``/package and return it as a tar, with what was
    exported; the folder goes whatever happens."""
    from voxelhub.cohort import export_cohort
    from voxelhub.cohort.service_import import package_tar

    try:
        target = os.path.join(folder, "package")
        done = export_cohort(location, target, project=project, modality=request.modality,
                             text=request.text, volumes=request.volumes, site=site,
                             catalog_url=catalog_url)  # fmt: skip
        return package_tar(target), {**asdict(done), "target": ""}
    finally:
        shutil.rmtree(folder, ignore_errors=True)
