"""A pull's state file: which instances are already staged (or rejected), by SOPInstanceUID.

One JSON line per instance, appended and fsynced after the instance's file is in place
(temp file + fsync + rename), so a pull killed at any moment and started again fetches only
what is missing: a file without its line is fetched again and replaces itself, a line
without its file (a disk that lost it) too.  A torn last line (killed mid-write) is ignored.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO

from voxelhub.dicomweb.errors import PullBusy

_SAFE_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
STATE_FILE = "state.jsonl"


class Outcome(StrEnum):
    STAGED = "staged"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Entry:
    sop: str
    series: str
    outcome: Outcome
    nbytes: int = 0
    reason: str = ""


def instance_file_name(sop: str) -> str | None:
    """``<SOPInstanceUID>.dcm``, or None when the server's UID is no UID (never a path)."""
    return f"{sop}.dcm" if len(sop) <= 64 and _SAFE_UID.match(sop) else None


class Journal:
    """The state file of one pull folder; :meth:`record` is thread-safe."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.instances = folder / "instances"
        self.instances.mkdir(mode=0o700, parents=True, exist_ok=True)
        for leftover in self.instances.glob(".*.part"):  # a write killed before its rename
            leftover.unlink(missing_ok=True)
        self.path = folder / STATE_FILE
        self.entries: dict[str, Entry] = {}
        if self.path.exists():
            for line in self.path.read_text(errors="replace").splitlines():
                try:
                    raw = json.loads(line)
                    entry = Entry(
                        raw["sop"], raw["series"], Outcome(raw["outcome"]),
                        int(raw.get("nbytes", 0)), str(raw.get("reason", "")),
                    )  # fmt: skip
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a kill
                self.entries[entry.sop] = entry
        self._lock = threading.Lock()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:  # one run per pull folder; the kernel lets go when a run dies, even by SIGKILL
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise PullBusy(
                f"another run of the same pull is working in {folder}: wait for it to end"
            ) from None

    def done(self, sop: str) -> bool:
        """Staged with its file in place, or rejected (a check failure is not fetched again)."""
        entry = self.entries.get(sop)
        if entry is None:
            return False
        if entry.outcome is Outcome.REJECTED:
            return True
        name = instance_file_name(sop)
        return name is not None and (self.instances / name).exists()

    def record(self, entry: Entry) -> None:
        line = (json.dumps({**asdict(entry), "outcome": str(entry.outcome)}) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)
            os.fsync(self._fd)
            self.entries[entry.sop] = entry

    def close(self) -> None:
        os.close(self._fd)


def write_atomically(folder: Path, name: str, write: Callable[[BinaryIO], object]) -> int:
    """Write ``folder/name`` through ``write(file)``: temp file, fsync, rename; its size."""
    final = folder / name
    temp = folder / f".{name}.{os.getpid()}.{threading.get_ident()}.part"
    try:
        with open(temp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.replace(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return size
