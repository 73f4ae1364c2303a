"""Sealed catalog columns: an encrypted identifiable project's names, IDs and dates, encrypted.

In a project that is encrypted and not de-identified, the catalog columns that can name a
patient (:data:`SEALED_COLUMNS`: patient ID, name, birth date, accession number, study and
series descriptions) hold ``vhc1.<data key id>.<base64>``: AES-256-GCM under a key derived
(HKDF, its own label) from the project's data key, the value padded to 16 bytes so its length
says little, with the project, table and column as additional data, so a value moved to another
column or project fails authentication.  The patient ID also gets a *blind index* (HMAC-SHA256
under another derived key) so ingest finds a patient's row again without the plaintext.

Only a process holding the key ring (:func:`voxelhub.store.encryption.use_keys`: the data
service, the ingest and ``voxelhub keys``) opens them.  A process holding no keys at all lists
them opaque (a listing of paths and checksums, ``voxelhub fsck``, needs none), and whatever
needs the values (:meth:`Catalog.identities`, a text search, a patient filter) fails with
:class:`~voxelhub.store.keys.MissingKey` naming project and key id; a wrong key or a changed
value always fails loudly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from voxelhub.errors import CatalogError
from voxelhub.store.keys import KeyRing, MissingKey

PREFIX = "vhc1"
INDEX_PREFIX = "vhb1"
NONCE_BYTES = 12
PAD_TO = 16

SEALED_COLUMNS = frozenset(
    {
        ("patients", "patient_key"),
        ("patients", "patient_name"),
        ("patients", "birth_date"),
        ("studies", "accession_number"),
        ("studies", "description"),
        ("volumes", "description"),
        ("ingest_reports", "paths"),
        ("ingest_reports", "non_dicom"),
        ("rejected_files", "source"),
        ("rejected_files", "reason"),
    }
)
"""(table, column) pairs sealed in an encrypted identifiable project (an ingest report's source
paths too: a folder is often named after the patient).  Lists (the JSON columns) are sealed
item by item."""


class CorruptValue(CatalogError):
    """A sealed catalog value failed authentication: changed, moved or damaged in the database."""


@dataclass(frozen=True)
class SealedValue:
    """The parts of a sealed column value."""

    key_id: str
    blob: bytes

    @classmethod
    def parse(cls, text: str) -> SealedValue | None:
        """The parts of ``text``, or None when it is not a sealed value at all."""
        parts = text.split(".", 2) if isinstance(text, str) else []
        if len(parts) != 3 or parts[0] != PREFIX:
            return None
        try:
            blob = base64.urlsafe_b64decode(parts[2].encode())
        except (binascii.Error, ValueError):
            return None
        return cls(parts[1], blob)


def is_sealed(text: object) -> bool:
    return isinstance(text, str) and SealedValue.parse(text) is not None


@lru_cache(maxsize=64)
def _derived(data_key: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(data_key)


def _pad(data: bytes) -> bytes:
    """ISO/IEC 7816-4 padding to a multiple of 16 bytes (the length shows only by 16s)."""
    data += b"\x80"
    return data + b"\0" * (-len(data) % PAD_TO)


def _unpad(data: bytes) -> bytes:
    end = data.rstrip(b"\0")
    if not end.endswith(b"\x80"):
        raise ValueError("bad padding")
    return end[:-1]


class ColumnSealer:
    """Seals and opens one project's catalog values with its data keys from ``ring``."""

    SEAL_LABEL = b"voxelhub catalog column v1"
    INDEX_LABEL = b"voxelhub catalog blind index v1"

    def __init__(self, project: str, ring: KeyRing | None) -> None:
        self.project = project
        self.ring = ring

    def no_keys(self, key_id: str) -> MissingKey:
        """The error of a process holding no keys, naming the project and the data key."""
        return MissingKey(
            f"project {self.project!r} keeps its identifying catalog columns sealed with data "
            f"key {key_id}, and this process holds no keys: reading them needs the master key "
            f"file (--key-file or $VOXELHUB_KEY_FILE), or read them through the data service"
        )

    def _key(self, key_id: str, label: bytes) -> bytes:
        if self.ring is None:
            raise self.no_keys(key_id)
        try:
            data_key = self.ring.data_key(key_id)
        except MissingKey as exc:
            raise MissingKey(
                f"project {self.project!r}: catalog values sealed with data key {key_id} "
                f"cannot be opened: {exc}"
            ) from None
        return _derived(data_key, label)

    def current_key_id(self) -> str:
        if self.ring is None:
            raise MissingKey(
                f"project {self.project!r} is encrypted and identifiable: its catalog columns "
                f"are sealed, and this process holds no keys (give the master key file)"
            )
        return self.ring.current(self.project)

    def _aad(self, table: str, column: str, key_id: str) -> bytes:
        return b"\0".join(
            (PREFIX.encode(), self.project.encode(), f"{table}.{column}".encode(), key_id.encode())
        )

    def seal(self, table: str, column: str, value: str, key_id: str | None = None) -> str:
        """``value`` sealed under ``key_id`` (default: the project's current data key)."""
        key_id = key_id or self.current_key_id()
        nonce = os.urandom(NONCE_BYTES)
        sealed = AESGCM(self._key(key_id, self.SEAL_LABEL)).encrypt(
            nonce, _pad((value or "").encode()), self._aad(table, column, key_id)
        )
        return f"{PREFIX}.{key_id}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def unseal(self, table: str, column: str, text: str) -> str:
        """The plaintext of a value :meth:`seal` made; :class:`CorruptValue` if it was changed
        (a clear value in a sealed column is one: nothing of this project is stored clear)."""
        parsed = SealedValue.parse(text)
        where = f"{table}.{column} of project {self.project!r}"
        if parsed is None or len(parsed.blob) < NONCE_BYTES + 16:
            raise CorruptValue(
                f"{where} holds a value that is not sealed: the catalog was changed outside "
                f"VoxelHub (restore it from a backup), or it was written before VoxelHub sealed "
                f"catalog columns (seal it: voxelhub keys reencrypt --project {self.project} …)"
            )
        key = self._key(parsed.key_id, self.SEAL_LABEL)
        try:
            padded = AESGCM(key).decrypt(
                parsed.blob[:NONCE_BYTES],
                parsed.blob[NONCE_BYTES:],
                self._aad(table, column, parsed.key_id),
            )
            return _unpad(padded).decode()
        except (InvalidTag, ValueError, UnicodeDecodeError):
            raise CorruptValue(
                f"a sealed value in {where} (data key {parsed.key_id}) failed authentication: "
                f"changed, moved from another row or column, or damaged in the database"
            ) from None

    def seal_value(self, table: str, column: str, value: object, key_id: str) -> object:
        """:meth:`seal` of a value, or of each item of a list (a JSON column)."""
        if isinstance(value, list):
            return [self.seal(table, column, str(v), key_id) for v in value]
        return self.seal(table, column, str(value or ""), key_id)

    def unseal_value(self, table: str, column: str, value: object) -> object:
        """:meth:`unseal` of a value, or of each item of a list."""
        if isinstance(value, list):
            return [self.unseal(table, column, str(v)) for v in value]
        return self.unseal(table, column, str(value))

    def blind_index(self, value: str, key_id: str | None = None) -> str:
        """An equality token for ``value`` (a patient ID) under ``key_id`` (default: current)."""
        key_id = key_id or self.current_key_id()
        digest = hmac.new(
            self._key(key_id, self.INDEX_LABEL),
            self.project.encode() + b"\0" + value.encode(),
            hashlib.sha256,
        ).hexdigest()
        return f"{INDEX_PREFIX}.{key_id}.{digest}"

    def blind_indexes(self, value: str) -> list[str]:
        """The token of ``value`` under every data key version of the project (rows sealed
        before a rotation keep the old version's until ``voxelhub keys reencrypt``)."""
        if self.ring is None:
            self.current_key_id()  # raises, naming the project
        assert self.ring is not None
        return [self.blind_index(value, v) for v in self.ring.versions(self.project)]


def sealer(project: str, location: Any = None) -> ColumnSealer:
    """A sealer for ``project`` with this process's key ring: the one given to
    :func:`~voxelhub.store.encryption.use_keys`, else on a laptop the store's opened with
    ``$VOXELHUB_KEY_FILE`` (as :mod:`voxelhub.store.stored` does), else none."""
    from voxelhub import config
    from voxelhub.store.encryption import keys_in_use, open_store_keys

    ring = keys_in_use()
    if ring is None and location is not None and config.key_file() is not None:
        ring = open_store_keys(location)
    return ColumnSealer(project, ring)


def key_ids_of(value: object) -> set[str]:
    """The data key ids a stored value (a list: its items) is sealed with."""
    items = value if isinstance(value, list) else [value]
    return {k for v in items if (k := key_id_of(v))}


def key_id_of(text: object) -> str | None:
    """The data key id a sealed value (or blind index) uses; None for a clear value."""
    if not isinstance(text, str):
        return None
    if text.startswith(INDEX_PREFIX + "."):
        return text.split(".", 2)[1]
    parsed = SealedValue.parse(text)
    return None if parsed is None else parsed.key_id
