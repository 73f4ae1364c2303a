"""A tamper-evident audit trail of the data service's access decisions.

Every decision (allowed or denied) becomes one JSON line in an append-only file.  Records are
hash-chained: each carries ``seq`` (1, 2, 3, ...), ``prev`` (the previous record's hash, 64 zeros
for the first) and ``hash``, the SHA-256 of the canonical JSON of the record without ``hash``
(sorted keys, compact separators, UTF-8).  Editing, deleting, inserting or reordering records
therefore breaks the chain, and :func:`verify` says where.

The chain alone cannot reveal a cut-off tail, or a log rewritten from scratch by someone who can
write it (the service account can).  :func:`checkpoint`, run periodically by another account
(root or the hub) that owns the checkpoints file, records the head ``(seq, hash)`` where the
service cannot change it; :func:`verify` with that file then detects both.

Chunk reads are aggregated per (user, volume, minute): scrolling through a volume is one record
with a count and a byte total, not thousands.  Denials are never aggregated.

One :class:`AuditLog` per process and file is the intended use; several processes appending to
the same file stay consistent too (an advisory ``flock`` serializes them, and each picks up the
others' head before it appends), provided each opens its own :class:`AuditLog` after forking.  To rotate, start a new log under a new name (the name is part
of each checkpoint), after closing the old one.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import logging
import os
import threading
import time as _time
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any

from voxelhub.errors import AuditError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

LOG_ENV = "VOXELHUB_AUDIT_LOG"
CHECKPOINTS_ENV = "VOXELHUB_AUDIT_CHECKPOINTS"

GENESIS = "0" * 64
"""``prev`` of the first record: no record comes before it."""

DECISIONS = ("allow", "deny")

_TAIL_LIMIT = 16 * 1024 * 1024
"""A last line longer than this is damaged: records are a few hundred bytes."""

_LOOKAHEAD = 10_000
"""Lines :func:`verify` reads past a broken link to tell a deletion from a reordering."""

_RECENT = 1024
"""Hashes of the last lines :func:`verify` remembers to recognise inserted records."""

_HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class AuditRecord:
    """One access decision (or one aggregate of allowed chunk reads), as stored in the log.

    ``time`` is when the access happened; for an aggregate it is the first read and ``last``
    the last one (for single decisions both are equal).  ``detail`` holds what does not fit the
    fixed fields, such as the parameters of a catalog query.
    """

    seq: int
    prev: str
    hash: str
    time: str
    last: str
    user: str
    client: str
    action: str
    decision: str
    reason: str = ""
    project: str | None = None
    patient: str | None = None
    study: str | None = None
    series: str | None = None
    volume: str | None = None
    labels: str | None = None
    source: str | None = None
    nbytes: int = 0
    count: int = 1
    detail: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditRecord:
        """A record from a parsed log line (unknown keys, from newer versions, are ignored)."""
        return cls(**{k: data[k] for k in _FIELD_NAMES if k in data})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        """The record as one canonical JSON line (without the newline)."""
        return _canonical(self.to_dict()).decode("utf-8")


_FIELD_NAMES = tuple(f.name for f in fields(AuditRecord))


@dataclass(frozen=True)
class Checkpoint:
    """The head of a log at one moment, kept where the service account cannot rewrite it."""

    seq: int
    hash: str
    time: str
    log: str


@dataclass(frozen=True)
class VerifyResult:
    """What :func:`verify` found: ``ok``, or the first broken record and what broke."""

    ok: bool
    records: int
    message: str
    first_bad_line: int | None = None
    first_bad_seq: int | None = None
    checkpoints: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS

    def __bool__(self) -> bool:
        return self.ok


# --- encoding ------------------------------------------------------------------------------


def _canonical(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def record_hash(record: Mapping[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of ``record`` without its ``hash`` key."""
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(_canonical(body)).hexdigest()


def _iso(when: datetime) -> str:
    return when.isoformat(timespec="microseconds")


def _as_utc(when: datetime | str) -> datetime:
    """An aware UTC datetime; naive datetimes and strings without offset are taken as UTC."""
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    if when.tzinfo is None:
        return when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _text(value: str | None) -> str | None:
    """Strings as they will read back: lone surrogates (undecodable input) become '?'."""
    if value is None:
        return None
    value = str(value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def _plain(detail: Mapping[str, Any] | None) -> dict[str, Any]:
    """``detail`` as JSON will read it back (tuples become lists, dates strings), so that the
    hash written is the hash :func:`verify` recomputes."""
    if not detail:
        return {}
    text = json.dumps(dict(detail), ensure_ascii=False, default=str, allow_nan=False)
    plain: dict[str, Any] = json.loads(text.encode("utf-8", "replace"))
    return plain


def _check_line(raw: bytes) -> tuple[dict[str, Any] | None, str]:
    """The parsed record of one log line, or ``None`` and why the line is damaged."""
    if not raw.endswith(b"\n"):
        return None, "is incomplete (no newline at the end: cut off mid-write or truncated)"
    try:
        obj = json.loads(raw)
    except ValueError as exc:
        return None, f"is not valid JSON ({exc})"
    if not isinstance(obj, dict):
        return None, "is not a JSON object"
    seq = obj.get("seq")
    if type(seq) is not int or seq < 1:
        return None, "has no valid seq (a positive integer)"
    for key in ("prev", "hash"):
        value = obj.get(key)
        if not (isinstance(value, str) and len(value) == 64 and set(value) <= _HEX):
            return None, f"has no valid {key} (64 lowercase hex digits)"
    return obj, ""


# --- reading ---------------------------------------------------------------------------------


def _open_read(path: Path, what: str = "audit log") -> IO[bytes]:
    try:
        return open(path, "rb")
    except PermissionError as exc:
        if what == "audit log":
            raise AuditError(
                f"only the data service account and root may read the audit log at {path}"
            ) from exc
        raise AuditError(f"permission denied reading the {what} at {path}") from exc
    except FileNotFoundError as exc:
        raise AuditError(f"{what} {path} does not exist") from exc


def _line_number(fd: int, offset: int) -> int:
    """1-based number of the line starting at byte ``offset`` (error path only: reads up to it)."""
    count, pos = 0, 0
    while pos < offset:
        chunk = os.pread(fd, min(1 << 20, offset - pos), pos)
        if not chunk:
            break
        count += chunk.count(b"\n")
        pos += len(chunk)
    return count + 1


def _read_head(fd: int, path: Path) -> tuple[int, str, int]:
    """``(seq, hash, size)`` of the last record, read from the end of the file only.

    Raises :class:`AuditError` naming the file and line when the last line is damaged: a broken
    chain must not be continued, or the damage would look like part of the record.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return 0, GENESIS, 0
    buf = b""
    pos = size
    start = -1
    while pos > 0 and len(buf) <= _TAIL_LIMIT:
        step = min(64 * 1024, pos)
        pos -= step
        buf = os.pread(fd, step, pos) + buf
        start = buf.rfind(b"\n", 0, len(buf) - 1)
        if start >= 0:
            break
    if start < 0 and pos > 0:
        line = _line_number(fd, size)
        raise AuditError(
            f"{path}, line {line}: the last line is damaged (no line break in its last "
            f"{len(buf)} bytes); refusing to append to a broken chain. Check it with "
            f"`voxelhub audit verify --log {path}`; an admin must set this log aside (keep it "
            "as evidence) before the service starts a new one"
        )
    raw = buf[start + 1 :]
    record, why = _check_line(raw)
    if record is not None and record_hash(record) != record["hash"]:
        record, why = None, "does not match its hash (edited)"
    if record is None:
        line = _line_number(fd, pos + start + 1)
        raise AuditError(
            f"{path}, line {line}: the last record {why}; refusing to append to a broken chain. "
            f"Check it with `voxelhub audit verify --log {path}`; an admin must set this log "
            "aside (keep it as evidence) before the service starts a new one"
        )
    return int(record["seq"]), str(record["hash"]), size


def _numbered_lines(f: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    return enumerate(f, start=1)


def _iter_records(path: Path) -> Iterator[dict[str, Any]]:
    with _open_read(path) as f:
        for lineno, raw in _numbered_lines(f):
            record, why = _check_line(raw)
            if record is None:
                raise AuditError(
                    f"{path}, line {lineno} {why}; run `voxelhub audit verify --log {path}`"
                )
            yield record


# --- writing ---------------------------------------------------------------------------------


@dataclass
class _Reads:
    """Allowed chunk reads of one (user, volume, minute, ...) not yet written."""

    fields: dict[str, Any]
    minute: datetime
    first: datetime
    last: datetime
    count: int = 0
    nbytes: int = 0


def _minute(when: datetime) -> datetime:
    return when.replace(second=0, microsecond=0)


class AuditLog:
    """The append-only, hash-chained log the data service writes (thread-safe, one lock).

    ``record()`` writes one decision at once; ``read()`` counts an allowed chunk read into the
    aggregate of its (user, volume, minute), written when a later minute starts, on
    ``flush_due()`` (call it every few seconds so quiet minutes are written too), ``flush()``
    and ``close()``.  Each record is one ``os.write`` of a whole line to a file opened with
    ``O_APPEND`` (created 0600).  ``fsync`` follows every denial (``fsync_denials``) and every
    ``fsync_every`` records (0: never; 1: every record), so an allowed record may be lost in a
    power cut but a denial is not.

    Opening resumes the chain from the last line, read from the end of the file.  A damaged last
    line raises :class:`AuditError`: the service must not continue a broken chain.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, fsync_every: int = 100, fsync_denials: bool = True
    ) -> None:
        self.path = Path(path)
        self.fsync_every = fsync_every
        self.fsync_denials = fsync_denials
        self._lock = threading.Lock()
        self._reads: dict[tuple[Any, ...], _Reads] = {}
        self._minute: datetime | None = None
        self._unsynced = 0
        try:
            self._fd: int | None = os.open(
                self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except PermissionError as exc:
            raise AuditError(
                f"cannot open the audit log {self.path} for appending: permission denied (it "
                "must be writable by the data service account)"
            ) from exc
        try:
            mode = os.fstat(self._fd).st_mode & 0o777
            if mode & 0o077:
                log.warning("audit log %s has mode %o; it should be 0600", self.path, mode)
            with self._file_lock():
                self._seq, self._hash, self._size = _read_head(self._fd, self.path)
        except BaseException:
            os.close(self._fd)
            self._fd = None
            raise

    # -- state --

    @property
    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the last record written (``(0, GENESIS)`` for an empty log)."""
        with self._lock:
            return self._seq, self._hash

    @property
    def closed(self) -> bool:
        return self._fd is None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- public writes --

    def record(
        self,
        *,
        user: str,
        client: str,
        action: str,
        decision: str,
        reason: str = "",
        project: str | None = None,
        patient: str | None = None,
        study: str | None = None,
        series: str | None = None,
        volume: str | None = None,
        labels: str | None = None,
        source: str | None = None,
        nbytes: int = 0,
        count: int = 1,
        detail: Mapping[str, Any] | None = None,
        at: datetime | None = None,
    ) -> AuditRecord:
        """Write one decision now (never aggregated) and return it as stored.

        ``client`` says where the request came from (``"server"``, ``"kernel"``, ``"worker"``:
        the service's words); ``source`` is the remote address; ``detail`` the rest, such as a
        catalog query's parameters.  ``at`` defaults to now; naive datetimes are taken as UTC.
        """
        if decision not in DECISIONS:
            raise ValueError(f"decision must be 'allow' or 'deny', not {decision!r}")
        when = _iso(_as_utc(at) if at is not None else datetime.now(UTC))
        body = {
            "time": when,
            "last": when,
            "user": _text(user),
            "client": _text(client),
            "action": _text(action),
            "decision": decision,
            "reason": _text(reason),
            "project": _text(project),
            "patient": _text(patient),
            "study": _text(study),
            "series": _text(series),
            "volume": _text(volume),
            "labels": _text(labels),
            "source": _text(source),
            "nbytes": int(nbytes),
            "count": int(count),
            "detail": _plain(detail),
        }
        with self._lock:
            return self._append(body, sync=decision == "deny" and self.fsync_denials)

    def read(
        self,
        *,
        user: str,
        client: str,
        volume: str,
        nbytes: int,
        project: str | None = None,
        patient: str | None = None,
        study: str | None = None,
        series: str | None = None,
        labels: str | None = None,
        source: str | None = None,
        action: str = "volume.read",
        reason: str = "",
        at: datetime | None = None,
    ) -> None:
        """Count one allowed chunk read into its (user, volume, minute) aggregate.

        Cheap (no I/O) unless a new minute begins, which writes the aggregates of earlier
        minutes.  Reads that differ in anything but time and size (client, address, action)
        go into separate aggregates, so each record stays true.  Denied reads must go through
        :meth:`record` instead.
        """
        when = _as_utc(at) if at is not None else datetime.now(UTC)
        minute = _minute(when)
        key: tuple[Any, ...] = (user, client, source, action, reason, project, patient)
        key += (study, series, volume, labels, minute)
        with self._lock:
            if self._fd is None:
                raise AuditError(f"audit log {self.path} is closed")
            if self._minute is None or minute > self._minute:
                if self._minute is not None:
                    self._flush_reads(before=minute)
                self._minute = minute
            reads = self._reads.get(key)
            if reads is None:
                reads = self._reads[key] = _Reads(
                    fields={
                        "user": _text(user),
                        "client": _text(client),
                        "action": _text(action),
                        "decision": "allow",
                        "reason": _text(reason),
                        "project": _text(project),
                        "patient": _text(patient),
                        "study": _text(study),
                        "series": _text(series),
                        "volume": _text(volume),
                        "labels": _text(labels),
                        "source": _text(source),
                        "detail": {},
                    },
                    minute=minute,
                    first=when,
                    last=when,
                )
            reads.count += 1
            reads.nbytes += int(nbytes)
            reads.first = min(reads.first, when)
            reads.last = max(reads.last, when)

    def flush_due(self, now: datetime | None = None) -> int:
        """Write the aggregates of minutes that are over; returns how many records were written.

        The service calls this periodically, so the reads of a quiet last minute reach the log.
        """
        minute = _minute(_as_utc(now) if now is not None else datetime.now(UTC))
        with self._lock:
            if self._fd is None:
                return 0
            return self._flush_reads(before=minute)

    def flush(self) -> int:
        """Write every pending aggregate and fsync; returns how many records were written."""
        with self._lock:
            if self._fd is None:
                return 0
            written = self._flush_reads(before=None)
            self._sync()
            return written

    def close(self) -> None:
        """Flush, fsync and close (idempotent)."""
        with self._lock:
            if self._fd is None:
                return
            try:
                self._flush_reads(before=None)
                self._sync()
            finally:
                os.close(self._fd)
                self._fd = None

    # -- internals (called with self._lock held) --

    def _flush_reads(self, *, before: datetime | None) -> int:
        due = [
            k for k, r in self._reads.items() if before is None or r.minute < before
        ]  # written oldest first, so the log reads in time order as far as possible
        due.sort(key=lambda k: self._reads[k].first)
        for key in due:
            reads = self._reads.pop(key)
            body = dict(reads.fields)
            body["time"] = _iso(reads.first)
            body["last"] = _iso(reads.last)
            body["nbytes"] = reads.nbytes
            body["count"] = reads.count
            self._append(body, sync=False)
        return len(due)

    def _file_lock(self) -> _FileLock:
        assert self._fd is not None
        return _FileLock(self._fd)

    def _append(self, body: dict[str, Any], *, sync: bool) -> AuditRecord:
        if self._fd is None:
            raise AuditError(f"audit log {self.path} is closed")
        with self._file_lock():
            size = os.fstat(self._fd).st_size
            if size != self._size:
                # another process (or AuditLog) appended: continue from its head
                if size < self._size:
                    log.error(
                        "audit log %s shrank from %d to %d bytes: records were cut off (verify "
                        "with its checkpoints shows which)",
                        self.path,
                        self._size,
                        size,
                    )
                self._seq, self._hash, self._size = _read_head(self._fd, self.path)
            body["seq"] = self._seq + 1
            body["prev"] = self._hash
            encoded = _canonical(body)
            digest = hashlib.sha256(encoded).hexdigest()
            # the hash goes first; the rest stays in canonical order (the line needn't be)
            line = b'{"hash":"' + digest.encode("ascii") + b'",' + encoded[1:] + b"\n"
            written = os.write(self._fd, line)
            if written != len(line):
                raise AuditError(
                    f"audit log {self.path}: short write ({written} of {len(line)} bytes; disk "
                    "full?); the last line is now damaged"
                )
            self._seq, self._hash = body["seq"], digest
            self._size += written
            self._unsynced += 1
            if sync or (self.fsync_every > 0 and self._unsynced >= self.fsync_every):
                self._sync()
        body["hash"] = digest
        return AuditRecord.from_dict(body)

    def _sync(self) -> None:
        if self._fd is not None and self._unsynced:
            os.fsync(self._fd)
            self._unsynced = 0


class _FileLock:
    """``flock`` around one append, so processes sharing a log keep one chain."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


# --- checkpoints ---------------------------------------------------------------------------------


def checkpoint(
    log_path: str | os.PathLike[str], checkpoints_path: str | os.PathLike[str]
) -> Checkpoint:
    """Append the log's current head ``(seq, hash)`` to the checkpoints file and return it.

    Run periodically by an account other than the service's (root, the hub) that owns the
    checkpoints file: records up to the last checkpoint can then no longer be cut off or
    rewritten unnoticed, even by someone who can write the log.
    """
    path = Path(log_path)
    with _open_read(path) as f:
        fd = f.fileno()
        # shared lock: never read a record the service is writing; don't wait forever for it
        deadline = _time.monotonic() + 5.0
        locked = False
        while not locked:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                if _time.monotonic() > deadline:
                    log.warning("audit log %s stays locked; reading its head unlocked", path)
                    break
                _time.sleep(0.01)
        try:
            seq, digest, _ = _read_head(fd, path)
        finally:
            if locked:
                fcntl.flock(fd, fcntl.LOCK_UN)
    mark = Checkpoint(seq=seq, hash=digest, time=_iso(datetime.now(UTC)), log=os.path.abspath(path))
    line = _canonical(asdict(mark)) + b"\n"
    try:
        fd = os.open(checkpoints_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except PermissionError as exc:
        raise AuditError(
            f"cannot append to the checkpoints file {checkpoints_path}: permission denied (run "
            "this as the account that owns it, root or the hub)"
        ) from exc
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return mark


def _load_checkpoints(
    checkpoints_path: Path, log_path: Path
) -> tuple[dict[int, list[tuple[int, Checkpoint]]], int, str]:
    """Checkpoints of ``log_path`` by seq, with their line; how many lines named other logs;
    and why the file is unusable ('' when fine)."""
    target = os.path.realpath(log_path)
    marks: dict[int, list[tuple[int, Checkpoint]]] = {}
    others = 0
    with _open_read(checkpoints_path, "checkpoints file") as f:
        for lineno, raw in _numbered_lines(f):
            try:
                data = json.loads(raw)
                mark = Checkpoint(
                    seq=data["seq"], hash=data["hash"], time=data["time"], log=data["log"]
                )
                if type(mark.seq) is not int or mark.seq < 0 or not isinstance(mark.hash, str):
                    raise ValueError("bad seq or hash")
            except (ValueError, KeyError, TypeError) as exc:
                return (
                    {},
                    0,
                    f"checkpoints file {checkpoints_path}, line {lineno} is damaged ({exc})",
                )
            if os.path.realpath(mark.log) != target:
                others += 1
                continue
            marks.setdefault(mark.seq, []).append((lineno, mark))
    return marks, others, ""


# --- verification --------------------------------------------------------------------------------


def verify(
    log_path: str | os.PathLike[str], checkpoints_path: str | os.PathLike[str] | None = None
) -> VerifyResult:
    """Check the whole chain and, with ``checkpoints_path``, the log against its checkpoints.

    Detects and locates (line and seq) an edited record (hash mismatch), deleted records (a
    gap in seq), inserted records, reordered records, damaged lines, and, with checkpoints, a
    log that ends before a checkpointed seq (truncated) or whose record at a checkpointed seq
    has another hash (rewritten and re-chained).  Only the first problem is reported.

    Without checkpoints, cutting records off the end of the log cannot be detected: what
    remains is a valid chain.  Neither can a log rewritten from scratch.  The result's message
    says so.  Reads the file once, streaming; memory stays bounded.
    """
    path = Path(log_path)
    marks: dict[int, list[tuple[int, Checkpoint]]] = {}
    others = 0
    if checkpoints_path is not None:
        marks, others, damaged = _load_checkpoints(Path(checkpoints_path), path)
        if damaged:
            return VerifyResult(False, 0, damaged)
    checked = 0
    last_matched = 0  # seq of the last checkpoint found to agree with the log

    def bad(message: str, line: int | None, seq: int | None, records: int) -> VerifyResult:
        return VerifyResult(
            False, records, f"{path}: {message}", line, seq, checked, expected - 1, prev_hash
        )

    expected, prev_hash, prev_line = 1, GENESIS, 0
    recent: dict[str, tuple[int, int]] = {}  # hash -> (line, seq) of the last _RECENT lines
    recent_order: deque[str] = deque()
    line_seq: dict[int, int] = {}  # line -> seq, same window

    for lineno, mark in marks.pop(0, []):
        checked += 1
        if mark.hash != GENESIS:
            return bad(
                f"checkpoint at line {lineno} of {checkpoints_path} records seq 0 with a hash "
                "other than 64 zeros",
                None,
                0,
                0,
            )

    with _open_read(path) as f:
        lines = _numbered_lines(f)
        for lineno, raw in lines:
            record, why = _check_line(raw)
            if record is None:
                return bad(f"line {lineno} {why}", lineno, expected, expected - 1)
            seq, prev, stated = record["seq"], record["prev"], record["hash"]
            if record_hash(record) != stated:
                return bad(
                    f"line {lineno} (seq {seq}) does not match its hash: the record was edited "
                    "after it was written",
                    lineno,
                    seq,
                    expected - 1,
                )
            if seq != expected or prev != prev_hash:
                message, line, bad_seq = _diagnose(
                    lineno, record, expected, prev_hash, prev_line, recent, line_seq, lines
                )
                return bad(message, line, bad_seq, expected - 1)
            for cp_line, mark in marks.pop(seq, []):
                checked += 1
                if mark.hash != stated:
                    return bad(
                        f"line {lineno} (seq {seq}) has hash {stated[:12]}…, but the checkpoint "
                        f"at line {cp_line} of {checkpoints_path} (taken {mark.time}) recorded "
                        f"{mark.hash[:12]}…: records were rewritten and re-chained after that "
                        f"checkpoint was taken (the change lies in seq {last_matched + 1}..{seq})",
                        lineno,
                        seq,
                        expected - 1,
                    )
                last_matched = seq
            recent[stated] = (lineno, seq)
            line_seq[lineno] = seq
            recent_order.append(stated)
            if len(recent_order) > _RECENT:
                old = recent_order.popleft()
                old_line, _ = recent.pop(old, (0, 0))
                line_seq.pop(old_line, None)
            expected, prev_hash, prev_line = seq + 1, stated, lineno

    records = expected - 1
    if marks:
        seq = min(marks)
        cp_line, mark = marks[seq][0]
        return bad(
            f"the log ends at seq {records} (line {prev_line}), but the checkpoint at line "
            f"{cp_line} of {checkpoints_path} (taken {mark.time}) records seq {seq}: records "
            f"{records + 1}..{max(marks)} (at least) were cut off the end (truncated)",
            prev_line + 1,
            records + 1,
            records,
        )
    if checkpoints_path is None:
        note = (
            "no checkpoints file given: records cut off the end, or a log rewritten from "
            "scratch, cannot be detected"
        )
    elif checked == 0:
        note = (
            f"no checkpoint in {checkpoints_path} names this log"
            + (f" ({others} name other logs)" if others else "")
            + ": records cut off the end cannot be detected"
        )
    else:
        note = f"{checked} checkpoint(s) agree, the last at seq {last_matched}"
        if last_matched < records:
            note += f" (records after seq {last_matched} are protected by the chain only)"
    return VerifyResult(
        True,
        records,
        f"{path}: ok, {records} record(s), chain intact; {note}",
        None,
        None,
        checked,
        records,
        prev_hash,
    )


def _diagnose(
    lineno: int,
    record: dict[str, Any],
    expected: int,
    prev_hash: str,
    prev_line: int,
    recent: dict[str, tuple[int, int]],
    line_seq: dict[int, int],
    lines: Iterator[tuple[int, bytes]],
) -> tuple[str, int, int]:
    """Message, line and seq for a record that does not continue the chain."""
    seq, prev, stated = record["seq"], record["prev"], record["hash"]
    if seq == expected:
        if prev_line == 0:
            return (
                "line 1 (seq 1) does not start a chain (its prev is not 64 zeros): the start "
                "of the log was replaced",
                1,
                1,
            )
        return (
            f"line {lineno} (seq {seq}) does not link to line {prev_line} (seq {seq - 1}): line "
            f"{prev_line} was replaced by a record with a recomputed hash (or the chain was "
            "rewritten from there)",
            prev_line,
            seq - 1,
        )
    if seq > expected:
        # deleted (expected never comes) or reordered/inserted (it comes later)
        ahead: list[tuple[int, dict[str, Any]]] = [(lineno, record)]
        found = None
        for n, raw in itertools.islice(lines, _LOOKAHEAD):
            r, _ = _check_line(raw)
            if r is None:
                continue
            ahead.append((n, r))
            if r["seq"] == expected:
                found = (n, r)
                break
        if found is not None:
            found_line, found_rec = found
            hashes = {r["hash"] for _, r in ahead}
            if any(r["prev"] in hashes for _, r in ahead[:-1]):
                return (
                    f"line {lineno} (seq {seq}) comes before line {found_line} (seq {expected}): "
                    "records were reordered",
                    lineno,
                    seq,
                )
            if found_rec["prev"] == prev_hash:
                return (
                    f"{_span(lineno, found_line - 1)} (seq {seq}) inserted: forged, not part of "
                    f"the chain (line {found_line}, seq {expected}, links to line {prev_line})",
                    lineno,
                    seq,
                )
            return (
                f"line {lineno} (seq {seq}) is out of order: seq {expected} only comes at line "
                f"{found_line}",
                lineno,
                seq,
            )
        if prev == prev_hash:
            return (
                f"line {lineno}: seq jumps from {expected - 1} to {seq} although the record links "
                f"to line {prev_line}: its seq was changed and its hash recomputed",
                lineno,
                seq,
            )
        missing = f"seq {expected}" if seq == expected + 1 else f"seq {expected}..{seq - 1}"
        return (
            f"{missing} missing before line {lineno} (seq {seq}): record(s) were deleted",
            lineno,
            expected,
        )
    # seq < expected: a copy, an insertion before this line, or a reordering
    if stated in recent:
        line, _ = recent[stated]
        return (
            f"line {lineno} (seq {seq}) is a copy of line {line}: a record was duplicated",
            lineno,
            seq,
        )
    if prev in recent:
        line, _ = recent[prev]
        first = line + 1
        first_seq = line_seq.get(first, seq)
        return (
            f"{_span(first, lineno - 1)} (seq {first_seq}) inserted: forged, not part of the "
            f"chain (line {lineno}, seq {seq}, links to line {line})",
            first,
            first_seq,
        )
    return (
        f"line {lineno} (seq {seq}) goes back (expected seq {expected}): records were reordered "
        "or inserted",
        lineno,
        seq,
    )


def _span(first: int, last: int) -> str:
    return f"line {first}" if first == last else f"lines {first}..{last}"


# --- queries --------------------------------------------------------------------------------


def query(
    log_path: str | os.PathLike[str],
    *,
    user: str | None = None,
    patient: str | Collection[str] | None = None,
    series: str | None = None,
    project: str | None = None,
    since: datetime | str | None = None,
    action: str | None = None,
    decision: str | None = None,
) -> list[AuditRecord]:
    """Records matching every filter given, in log order (streams the file).

    ``patient`` is a name or several (a sealed project's patient is recorded by blind index:
    :meth:`voxelhub.catalog.Catalog.audit_names`); ``series`` matches a volume UID or a series UID; ``since`` keeps records whose last access
    is at or after it (naive datetimes and strings without offset are UTC).  Does not check the
    chain: use :func:`verify` for that.
    """
    try:
        cutoff = _as_utc(since) if since is not None else None
    except ValueError as exc:
        raise AuditError(f"since: {since!r} is not an ISO-8601 time ({exc})") from exc
    patients = None if patient is None else {patient} if isinstance(patient, str) else set(patient)
    found = []
    for data in _iter_records(Path(log_path)):
        if (
            (user is not None and data.get("user") != user)
            or (patients is not None and data.get("patient") not in patients)
            or (project is not None and data.get("project") != project)
            or (action is not None and data.get("action") != action)
            or (decision is not None and data.get("decision") != decision)
            or (series is not None and series not in (data.get("volume"), data.get("series")))
        ):
            continue
        if cutoff is not None:
            stamp = data.get("last") or data.get("time")
            if not isinstance(stamp, str) or _as_utc(stamp) < cutoff:
                continue
        found.append(AuditRecord.from_dict(data))
    return found


def to_frame(records: Iterable[AuditRecord]) -> pd.DataFrame:
    """Records as a pandas DataFrame (``time``/``last`` as UTC timestamps), for notebooks."""
    import pandas as pd

    frame = pd.DataFrame([r.to_dict() for r in records], columns=list(_FIELD_NAMES))
    for column in ("time", "last"):
        frame[column] = pd.to_datetime(frame[column], utc=True, format="ISO8601")
    return frame


_TABLE = (
    "time",
    "user",
    "client",
    "action",
    "decision",
    "project",
    "patient",
    "volume",
    "count",
    "nbytes",
    "source",
    "reason",
)


def format_table(records: Iterable[AuditRecord]) -> str:
    """A plain-text table of records, one line each (what ``voxelhub audit query`` prints)."""
    rows = [list(_TABLE)]
    for r in records:
        what = r.volume or r.series or r.study or (f"labels:{r.labels}" if r.labels else "")
        if not what and r.detail:
            what = json.dumps(r.detail, sort_keys=True, ensure_ascii=False)
        values = [getattr(r, c) for c in _TABLE]
        values[_TABLE.index("volume")] = what
        rows.append(["" if v is None else str(v) for v in values])
    if len(rows) == 1:
        return "no records"
    widths = [max(len(row[i]) for row in rows) for i in range(len(_TABLE))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def log_path_from(value: str | os.PathLike[str] | None) -> Path:
    """The log path given, else ``$VOXELHUB_AUDIT_LOG``; a clear error when neither is set."""
    value = value or os.environ.get(LOG_ENV)
    if not value:
        raise AuditError(f"no audit log given: pass --log PATH or set ${LOG_ENV}")
    return Path(value)


def checkpoints_path_from(
    value: str | os.PathLike[str] | None, *, required: bool = False
) -> Path | None:
    """The checkpoints path given, else ``$VOXELHUB_AUDIT_CHECKPOINTS`` (None if unset)."""
    value = value or os.environ.get(CHECKPOINTS_ENV)
    if not value:
        if required:
            raise AuditError(
                f"no checkpoints file given: pass --checkpoints PATH or set ${CHECKPOINTS_ENV}"
            )
        return None
    return Path(value)
