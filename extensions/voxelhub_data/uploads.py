"""Uploads: a curator's zip of DICOM files, ingested into a project by the data service.

The zip is streamed to a private (0700) folder of the service's account, its directory is
checked before anything is unpacked (no absolute or ``..`` names, no links, no encrypted
members, caps on the file count and on the uncompressed size, which is counted again while
unpacking because a zip's sizes can lie), every file is checked as the DICOM edge checks an
instance (:func:`voxelhub.dicom.checks.check_instance`: truncated or non-image files are
rejected with the reason), and what passes is ingested with the normal ingest (de-identified
when the project is).  The upload's folder is deleted whatever happens: the files are never in
the store's or another project's reach.  The state of each upload is kept in the service's
memory (the report of an upload is for the session that made it).
"""

from __future__ import annotations

import datetime as dt
import enum
import io
import os
import secrets
import shutil
import stat
import threading
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from email.message import Message
from typing import Any

from voxelhub.dicom.checks import check_instance

_COPY = 1 << 20
_KEEP_REPORTS = 1000  # finished uploads whose reports the service keeps (newest)


class UploadRefused(ValueError):
    """The zip cannot be taken; the message names the problem (a 400 at the service)."""


class NotAZip(UploadRefused):
    """The body is not a readable zip archive."""


class UnsafeName(UploadRefused):
    """A member's name is absolute or climbs out of the upload folder."""


class LinkInZip(UploadRefused):
    """A member is a symbolic link (or another non-regular file)."""


class EncryptedMember(UploadRefused):
    """A member is encrypted: nothing here can read it."""


class TooManyFiles(UploadRefused):
    """More members than the service takes in one upload."""


class TooLarge(UploadRefused):
    """More uncompressed bytes than the service takes in one upload (a zip bomb included)."""


class DamagedMember(UploadRefused):
    """A member does not unpack to what the zip's directory says (bad CRC, cut data)."""


class UploadState(enum.Enum):
    RECEIVED = "received"
    CHECKING = "checking"
    INGESTING = "ingesting"
    DONE = "done"
    FAILED = "failed"


_FINISHED = (UploadState.DONE, UploadState.FAILED)


@dataclass
class Upload:
    """One upload and, once it ends, its report."""

    id: str
    project: str
    user: str
    nbytes: int
    created: str
    state: UploadState = UploadState.RECEIVED
    files: int = 0
    checked: int = 0
    volumes: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    message: str = ""
    names_withheld: bool = False
    """True in a de-identified project: rejected files are named by position in the zip, not
    by their names there (which can carry a patient's name or ID)."""

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["state"] = self.state.value
        return out


@dataclass(frozen=True)
class Limits:
    max_files: int
    max_unpacked_bytes: int


def check_directory(path: str, limits: Limits) -> list[zipfile.ZipInfo]:
    """The zip's regular members, or :class:`UploadRefused` naming what is wrong."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise NotAZip(f"the upload is not a zip archive: {exc}") from None
    files = [m for m in members if not m.is_dir()]
    if len(files) > limits.max_files:
        raise TooManyFiles(
            f"the zip holds {len(files)} files; an upload may hold {limits.max_files}"
        )
    total = 0
    for m in members:
        name = m.filename
        parts = name.replace("\\", "/").split("/")
        if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
            raise UnsafeName(f"unsafe name in the zip: {name[:200]!r} (absolute or '..')")
        mode = m.external_attr >> 16  # unix mode; its type bits are 0 from many zip writers
        if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
            kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file"
            raise LinkInZip(f"{name[:200]!r} in the zip is {kind}")
        if m.flag_bits & 0x1:
            raise EncryptedMember(f"{name[:200]!r} in the zip is encrypted")
        total += m.file_size
    if total > limits.max_unpacked_bytes:
        raise TooLarge(
            f"the zip unpacks to {total} bytes; an upload may unpack to {limits.max_unpacked_bytes}"
        )
    if not files:
        raise NotAZip("the zip holds no files")
    return files


def unpack(path: str, dest: str, limits: Limits) -> list[tuple[str, str]]:
    """Unpack the checked zip into ``dest`` under numbered names (a member's name never
    becomes a path); ``(member name, file)`` pairs.  Bytes are counted as they come."""
    members = check_directory(path, limits)
    written = 0
    out: list[tuple[str, str]] = []
    with zipfile.ZipFile(path) as archive:
        for n, member in enumerate(members):
            target = os.path.join(dest, f"{n:06d}.dcm")
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f, archive.open(member) as src:
                try:
                    while chunk := src.read(_COPY):
                        written += len(chunk)
                        if written > limits.max_unpacked_bytes:
                            raise TooLarge(
                                "the zip unpacks to more than its directory says, past the cap "
                                f"of {limits.max_unpacked_bytes} bytes: refused as a zip bomb"
                            )
                        f.write(chunk)
                except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
                    raise DamagedMember(f"{member.filename[:200]!r} in the zip: {exc}") from None
            out.append((member.filename, target))
    return out


Notify = Callable[[str, Upload], None]


class Uploads:
    """The service's uploads: a private folder, the running ones' state, one ingest at a time."""

    def __init__(self, directory: str, limits: Limits) -> None:
        self.directory = directory
        self.limits = limits
        self._uploads: dict[str, Upload] = {}
        self._lock = threading.Lock()
        self._ingest_lock = threading.Lock()  # one ingest at a time: the catalog's writer
        os.makedirs(directory, mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)

    def new(self, project: str, user: str) -> tuple[Upload, str]:
        """A new upload and the private file its body is written to."""
        upload_id = secrets.token_urlsafe(12)
        folder = os.path.join(self.directory, upload_id)
        os.mkdir(folder, 0o700)
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        upload = Upload(id=upload_id, project=project, user=user, nbytes=0, created=now)
        return upload, os.path.join(folder, "upload.zip")

    def register(self, upload: Upload) -> None:
        with self._lock:
            self._uploads[upload.id] = upload
            finished = [u for u in self._uploads.values() if u.state in _FINISHED]
            for old in finished[: max(0, len(finished) - _KEEP_REPORTS)]:  # oldest first
                del self._uploads[old.id]

    def get(self, upload_id: str) -> Upload | None:
        with self._lock:
            return self._uploads.get(upload_id)

    def check(self, zip_path: str) -> None:
        """:func:`check_directory` with this service's limits (before the 202)."""
        check_directory(zip_path, self.limits)

    def discard(self, upload: Upload) -> None:
        shutil.rmtree(os.path.join(self.directory, upload.id), ignore_errors=True)

    def run(
        self,
        upload: Upload,
        ingest_into: Callable[[str, str], Any],
        parts: list[bytes] | None = None,
    ) -> None:
        """In a worker thread: unpack (or write the STOW-RS ``parts``), check, ingest
        (``ingest_into(folder, project)`` gives an IngestReport).  The upload's folder is removed
        whatever happened, before the final state is published: a finished upload has left
        nothing behind."""
        try:
            state, message = self._ingest(upload, ingest_into, parts)
        except UploadRefused as exc:
            state, message = UploadState.FAILED, str(exc)
        except Exception as exc:  # reported, never a half-known state
            state, message = UploadState.FAILED, f"{type(exc).__name__}: {exc}"
        finally:
            self.discard(upload)
        upload.message = message[:2000]
        upload.state = state

    def _ingest(
        self, upload: Upload, ingest_into: Callable[[str, str], Any], parts: list[bytes] | None
    ) -> tuple[UploadState, str]:
        folder = os.path.join(self.directory, upload.id)
        files_dir = os.path.join(folder, "files")
        upload.state = UploadState.CHECKING
        os.mkdir(files_dir, 0o700)
        if parts is None:
            zip_path = os.path.join(folder, "upload.zip")
            files = unpack(zip_path, files_dir, self.limits)
            os.unlink(zip_path)
        else:
            files = write_parts(parts, files_dir)
        if upload.names_withheld:
            files = [(f"file {n + 1} of the zip", path) for n, (_, path) in enumerate(files)]
        upload.files = len(files)
        good = 0
        for name, path in files:
            with open(path, "rb") as f:
                problem = check_instance(f.read())
            if problem:
                upload.rejected.append({"file": name, "reason": problem})
                os.unlink(path)
            else:
                good += 1
            upload.checked += 1
        if not good:
            raise UploadRefused("no file of the zip is a whole DICOM image")
        upload.state = UploadState.INGESTING
        with self._ingest_lock:
            report = ingest_into(files_dir, upload.project)
        upload.volumes = list(report.written)
        upload.unchanged = list(report.unchanged)
        member = {path: name for name, path in files}
        for item in report.rejected_files:
            source = str(item.get("source", ""))
            name = member.get(source, os.path.basename(source))
            upload.rejected.append({"file": name, "reason": str(item["reason"])})
        failed = "; ".join(str(f["reason"]) for f in report.failed)
        done = upload.volumes or upload.unchanged
        message = (
            f"{len(upload.volumes)} volume(s) written, {len(upload.unchanged)} unchanged, "
            f"{len(upload.rejected)} of {upload.files} file(s) rejected"
            + (f"; failed: {failed}" if failed else "")
        )
        return (UploadState.DONE if done else UploadState.FAILED), message


# -- STOW-RS (PS3.18 10.5): instances in a multipart/related body ---------------------------------
class NotStowRequest(UploadRefused):
    """The body is not ``multipart/related; type="application/dicom"`` with a boundary."""


def split_related(body: bytes, content_type: str) -> list[bytes]:
    """The ``application/dicom`` parts of a STOW-RS request body, in order."""
    header = Message()
    header["Content-Type"] = content_type
    boundary = header.get_param("boundary")
    kind = str(header.get_param("type") or "application/dicom").lower()
    if header.get_content_type() != "multipart/related" or not isinstance(boundary, str):
        raise NotStowRequest(
            'STOW-RS takes multipart/related; type="application/dicom" with a boundary, not '
            f"{content_type[:100]!r}"
        )
    if kind != "application/dicom":
        raise NotStowRequest(f"only application/dicom parts are taken, not {kind[:60]!r}")
    delimiter = b"\r\n--" + boundary.encode()
    pieces = (b"\r\n" + body).split(delimiter)
    if len(pieces) < 3 or not pieces[-1].startswith(b"--"):
        raise NotStowRequest("the multipart body has no parts or no closing boundary")
    parts: list[bytes] = []
    for n, piece in enumerate(pieces[1:-1]):
        head, sep, data = piece.partition(b"\r\n\r\n")
        if not sep:
            raise NotStowRequest(f"part {n + 1} has no header end")
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            part_kind = value.split(";")[0].strip().lower()
            if name.strip().lower() == "content-type" and part_kind != "application/dicom":
                raise NotStowRequest(f"part {n + 1} is {part_kind[:60]!r}, not application/dicom")
        parts.append(data)
    return parts


def write_parts(parts: list[bytes], dest: str) -> list[tuple[str, str]]:
    """Each part to a numbered private file; ``(part N, file)`` pairs."""
    out = []
    for n, data in enumerate(parts):
        target = os.path.join(dest, f"{n:06d}.dcm")
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        out.append((part_name(n), target))
    return out


def part_name(n: int) -> str:
    return f"part {n + 1}"


def stow_response(upload: Upload, parts: list[bytes]) -> tuple[int, dict[str, Any]]:
    """The STOW-RS answer (status, DICOM JSON): each instance referenced, or failed with
    0xC000 (processing failure) and the reason (PS3.18 table 10.5.3-1)."""
    import pydicom

    rejected = {r["file"]: r["reason"] for r in upload.rejected}
    stored = upload.state is UploadState.DONE
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for n, data in enumerate(parts):
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            uids = {
                "00081150": {"vr": "UI", "Value": [str(ds.SOPClassUID)]},
                "00081155": {"vr": "UI", "Value": [str(ds.SOPInstanceUID)]},
            }
        except Exception:  # an unreadable part has no UIDs to name it by
            uids = {}
        reason = rejected.get(part_name(n)) or ("" if stored else upload.message)
        if reason:
            failed.append({**uids, "00081197": {"vr": "US", "Value": [0xC000]},
                           "00081196": {"vr": "US", "Value": [0xC000]}})  # fmt: skip
        else:
            referenced.append(uids)
    body: dict[str, Any] = {}
    if referenced:
        body["00081199"] = {"vr": "SQ", "Value": referenced}
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": failed}
    status = 409 if not referenced else 202 if failed else 200
    return status, body
