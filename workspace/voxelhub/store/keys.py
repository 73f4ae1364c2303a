"""Envelope encryption keys: one data key per project, wrapped by a master key kept elsewhere.

- A **master key** never touches the store.  A :class:`KeyProvider` holds it: :class:`FileKeyProvider`
  reads a key file (mode 0600, owned by the reader, outside the store), and a cloud KMS or Vault
  can implement the same two calls (``wrap`` / ``unwrap``).
- A **data key** (32 random bytes) per project encrypts that project's chunks
  (:mod:`voxelhub.store.encryption`).  It is kept only *wrapped* (AES-256-GCM under the master
  key), in ``<store>/.keys/<project>.json`` beside the data it opens, so a backup of the store
  carries it and is still useless without the master key.
- **Rotating the master key** (:meth:`KeyRing.rewrap`) re-wraps every data key under the new
  master: no volume is rewritten.  **Rotating a project's data key** (:meth:`KeyRing.rotate`) adds
  a new current version; what was written with the old one stays readable until it is rewritten.

Ids are random, never derived from key bytes, so ``zarr.json`` and the key files say which key
to use without saying anything about it.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from voxelhub.errors import StoreError

KEY_BYTES = 32
NONCE_BYTES = 12
KEYS_FOLDER = ".keys"
"""Folder of a store's wrapped data keys (never served: the data service serves volumes only)."""


class HasFs(Protocol):
    """What holds a remote key ring's file system (a store location: it remakes the file
    system in a forked child)."""

    @property
    def fs(self) -> Any: ...


class MissingKey(StoreError):
    """A master or data key is missing, wrong, or kept where others could read it."""


@dataclass(frozen=True)
class Wrapped:
    """A data key encrypted under master key ``master_id`` (``nonce | ciphertext | tag``)."""

    master_id: str
    blob: bytes


class KeyProvider(Protocol):
    """Holds master keys; what a KMS or Vault client implements."""

    @property
    def current_id(self) -> str:
        """The master key new data keys are wrapped with."""

    def wrap(self, data_key: bytes, context: bytes) -> Wrapped:
        """Encrypt ``data_key`` under the current master key, bound to ``context``."""

    def unwrap(self, wrapped: Wrapped, context: bytes) -> bytes:
        """The data key; :class:`MissingKey` naming the master key id if it is unknown or wrong."""


class FileKeyProvider:
    """Master keys from a JSON key file: ``{"current": id, "keys": {id: base64 key}}``.

    The file must be a regular file of the reading user with no group or other permissions
    (0600): a key anyone else can read is no key.  Several keys may be listed, so that data keys
    wrapped under an old master stay readable while :meth:`KeyRing.rewrap` moves them to the new.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._keys, self._current = self._read()

    @staticmethod
    def create(path: str | os.PathLike[str]) -> FileKeyProvider:
        """A new key file with one random master key (refuses to overwrite one)."""
        target = Path(path)
        key_id = secrets.token_hex(8)
        _write_private(target, {"current": key_id, "keys": {key_id: _b64(_random_key())}}, new=True)
        return FileKeyProvider(target)

    def add_master(self) -> str:
        """Add a new random master key and make it current; return its id (old ones are kept)."""
        key_id = secrets.token_hex(8)
        keys = {k: _b64(v) for k, v in self._keys.items()}
        keys[key_id] = _b64(_random_key())
        _write_private(self.path, {"current": key_id, "keys": keys})
        self._keys, self._current = self._read()
        return key_id

    def retire(self, key_id: str) -> None:
        """Remove an old master key from the file (after :meth:`KeyRing.rewrap`)."""
        if key_id == self._current:
            raise MissingKey(f"master key {key_id} is the current one; add another first")
        keys = {k: _b64(v) for k, v in self._keys.items() if k != key_id}
        _write_private(self.path, {"current": self._current, "keys": keys})
        self._keys, self._current = self._read()

    def reload(self) -> None:
        """Read the key file again (another process may have rotated it)."""
        self._keys, self._current = self._read()

    @property
    def current_id(self) -> str:
        return self._current

    def wrap(self, data_key: bytes, context: bytes) -> Wrapped:
        nonce = os.urandom(NONCE_BYTES)
        blob = AESGCM(self._keys[self._current]).encrypt(nonce, data_key, context)
        return Wrapped(self._current, nonce + blob)

    def unwrap(self, wrapped: Wrapped, context: bytes) -> bytes:
        master = self._keys.get(wrapped.master_id)
        if master is None:
            raise MissingKey(
                f"master key {wrapped.master_id} is not in {self.path} (keys there: "
                f"{', '.join(sorted(self._keys))}): restore that key file, or the backup of it"
            )
        try:
            return AESGCM(master).decrypt(
                wrapped.blob[:NONCE_BYTES], wrapped.blob[NONCE_BYTES:], context
            )
        except InvalidTag:
            raise MissingKey(
                f"data key wrapped under master key {wrapped.master_id} does not open with the "
                f"key of that id in {self.path}: the key file or the wrapped key was changed"
            ) from None

    def _read(self) -> tuple[dict[str, bytes], str]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise MissingKey(f"no master key file at {self.path}") from None
        except OSError as e:
            raise MissingKey(f"cannot open the master key file {self.path}: {e}") from None
        with os.fdopen(fd) as f:
            st = os.fstat(f.fileno())
            # root (an admin's ingest) may use the key file it handed to the service's account
            owner_ok = st.st_uid == os.geteuid() or os.geteuid() == 0
            if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o077 or not owner_ok:
                raise MissingKey(
                    f"master key file {self.path} must be a regular file of uid {os.geteuid()} "
                    f"with mode 0600 (it is {oct(stat.S_IMODE(st.st_mode))}, uid {st.st_uid}): "
                    f"chmod 600 it, or make a new one"
                )
            data = json.load(f)
        keys = {str(k): _unb64(str(v)) for k, v in dict(data["keys"]).items()}
        current = str(data["current"])
        if current not in keys or any(len(k) != KEY_BYTES for k in keys.values()):
            raise MissingKey(f"master key file {self.path} is malformed")
        return keys, current


class KeyRing:
    """The wrapped data keys of one store (``<store>/.keys/``), opened with a :class:`KeyProvider`.

    Thread-safe; unwrapped keys are cached in this process only (never written, never pickled).
    """

    def __init__(
        self, folder: str | os.PathLike[str], provider: KeyProvider, *, files: HasFs | None = None
    ) -> None:
        self.files = files
        """Where the records live: None for a local folder, else a holder of an fsspec file
        system (a store location on object storage: the wrapped keys sit in the bucket)."""
        self.folder: Any = Path(folder) if files is None else str(folder).rstrip("/")
        self.provider = provider
        self._lock = threading.Lock()
        self._plain: dict[str, bytes] = {}

    def current(self, project: str) -> str:
        """Id of ``project``'s current data key, made (and wrapped) the first time it is asked.

        Processes writing the same project at once (ingest workers, two ingests) agree on one
        key: the record is read again, and made, under an exclusive lock of the key folder."""
        with self._lock:
            record = self._record(project)
            if record is None:
                with self._folder_lock():
                    record = self._record(project)
                    if record is None:
                        record = {"project": project, "current": "", "versions": {}}
                        self._add_version(project, record)
            return str(record["current"])

    @contextmanager
    def _folder_lock(self) -> Iterator[None]:
        with self.lock(".lock", wait=True):
            yield

    @contextmanager
    def lock(self, name: str, *, wait: bool) -> Iterator[None]:
        """An exclusive lock ``name`` of this ring; :class:`BlockingIOError` if ``wait`` is
        false and another process holds it.  A local ring locks a file in its folder; a ring
        in a bucket (which has no locks) a file in the caller's private secrets folder
        (:func:`voxelhub.config.secrets_dir`), so only one account's processes on one machine
        are serialised there (on the hub: the data service's)."""
        if self.files is None:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = self.folder / name
        else:
            from voxelhub.config import secrets_dir

            tag = hashlib.sha256(str(self.folder).encode()).hexdigest()[:16]
            locks = secrets_dir() / "locks"
            locks.mkdir(mode=0o700, parents=True, exist_ok=True)
            path = locks / f"keys-{tag}{name}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            yield
        finally:
            os.close(fd)

    def _record_paths(self) -> list[Any]:
        if self.files is None:
            return sorted(self.folder.glob("*.json"))
        fs = self.files.fs
        if not fs.exists(self.folder):
            return []
        return sorted(p for p in fs.ls(self.folder, detail=False) if str(p).endswith(".json"))

    def _load(self, path: Any) -> dict[str, Any]:
        if self.files is None:
            return dict(json.loads(path.read_text()))
        return dict(json.loads(self.files.fs.cat_file(path)))

    def _save(self, path: Any, record: dict[str, Any]) -> None:
        if self.files is None:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            _write_private(path, record)
        else:  # one PUT: an object is replaced whole, never half-written
            self.files.fs.pipe_file(path, json.dumps(record, indent=1).encode())

    def data_key(self, key_id: str) -> bytes:
        """The data key ``key_id`` (any project, any version), unwrapped.

        A master-key rotation may run meanwhile (another process re-wrapping the key records and
        retiring the old master): a failed unwrap reads the key file and the records again
        before it is an error."""
        with self._lock:
            if key_id in self._plain:
                return self._plain[key_id]
            try:
                key = self._unwrap(key_id)
            except MissingKey:
                reload = getattr(self.provider, "reload", None)
                if reload is None:
                    raise
                reload()
                key = self._unwrap(key_id)
            self._plain[key_id] = key
            return key

    def _unwrap(self, key_id: str) -> bytes:
        for path in self._record_paths():
            record = self._load(path)
            version = record["versions"].get(key_id)
            if version is not None:
                wrapped = Wrapped(version["master"], _unb64(version["wrapped"]))
                return self.provider.unwrap(wrapped, _context(record["project"], key_id))
        raise MissingKey(
            f"no data key {key_id} in {self.folder}: was the store restored without it?"
        )

    def rotate(self, project: str) -> str:
        """A new current data key for ``project``; older versions stay for what they wrote."""
        with self._lock, self._folder_lock():
            record = self._record(project) or {"project": project, "current": "", "versions": {}}
            return self._add_version(project, record)

    def versions(self, project: str) -> list[str]:
        """Ids of every data key version ``project`` has (current and older)."""
        with self._lock:
            record = self._record(project)
            return [] if record is None else list(record["versions"])

    def retire_data_key(self, project: str, key_id: str) -> None:
        """Forget an old data key version of ``project`` (what it sealed becomes unreadable).

        Callers check first that nothing uses it
        (:func:`voxelhub.store.reencrypt.retire_old_keys`); the current version is refused."""
        with self._lock, self._folder_lock():
            record = self._record(project)
            if record is None or key_id not in record["versions"]:
                raise MissingKey(f"project {project!r} has no data key {key_id}")
            if record["current"] == key_id:
                raise MissingKey(
                    f"data key {key_id} is project {project!r}'s current one: rotate first"
                )
            del record["versions"][key_id]
            self._save(self._path(project), record)
            self._plain.pop(key_id, None)

    def rewrap(self) -> int:
        """Wrap every data key under the provider's current master key; return how many changed.

        Volumes are not touched: only the small key files are rewritten (atomically)."""
        changed = 0
        with self._lock:
            for path in self._record_paths():
                record = self._load(path)
                for key_id, version in record["versions"].items():
                    if version["master"] == self.provider.current_id:
                        continue
                    context = _context(record["project"], key_id)
                    key = self.provider.unwrap(
                        Wrapped(version["master"], _unb64(version["wrapped"])), context
                    )
                    fresh = self.provider.wrap(key, context)
                    version.update(master=fresh.master_id, wrapped=_b64(fresh.blob))
                    changed += 1
                self._save(path, record)
        return changed

    def masters_in_use(self) -> set[str]:
        """Master key ids some data key is still wrapped under (retire the others)."""
        return {
            str(v["master"])
            for path in self._record_paths()
            for v in self._load(path)["versions"].values()
        }

    def _record(self, project: str) -> dict[str, Any] | None:
        path = self._path(project)
        if self.files is None:
            return self._load(path) if path.exists() else None
        return self._load(path) if self.files.fs.exists(path) else None

    def _add_version(self, project: str, record: dict[str, Any]) -> str:
        key_id = secrets.token_hex(8)
        key = _random_key()
        wrapped = self.provider.wrap(key, _context(project, key_id))
        record["versions"][key_id] = {
            "master": wrapped.master_id,
            "wrapped": _b64(wrapped.blob),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        record["current"] = key_id
        self._save(self._path(project), record)
        self._plain[key_id] = key
        return key_id

    def _path(self, project: str) -> Any:
        # file names carry no project name (a name may say what a study is about)
        name = hashlib.sha256(project.encode()).hexdigest()[:24] + ".json"
        return self.folder / name if self.files is None else f"{self.folder}/{name}"


def store_key_ring(store_root: str | os.PathLike[str], key_file: str | os.PathLike[str]) -> KeyRing:
    """The key ring of a local store (``<store>/.keys``) opened with the master key file."""
    return KeyRing(Path(store_root) / KEYS_FOLDER, FileKeyProvider(key_file))


def _context(project: str, key_id: str) -> bytes:
    """What a wrapped key is bound to: it cannot be swapped to another project or id."""
    return b"voxelhub-data-key\0" + project.encode() + b"\0" + key_id.encode()


def _random_key() -> bytes:
    return os.urandom(KEY_BYTES)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode(), validate=True)


def _write_private(path: Path, data: object, *, new: bool = False) -> None:
    """Write JSON to ``path`` atomically, mode 0600 from creation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if new and path.exists():
        raise MissingKey(f"{path} exists: refusing to overwrite a key file")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
