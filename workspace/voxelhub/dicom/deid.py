"""DICOM PS3.15 Annex E de-identification of headers, with keyed (secret-dependent) actions.

What is applied
---------------
The Basic Application Level Confidentiality Profile (PS3.15 Table E.1-1) to a pydicom
:class:`~pydicom.dataset.Dataset`, recursively (sequence items and ``file_meta`` included),
plus two options:

* **Retain Longitudinal Temporal Information with Modified Dates Option** (on by default,
  ``shift_dates=True``): the date and time attributes of the table (VR DA, DT, TM; the standard
  marks them ``C`` for this option) are *kept and modified* instead of removed or emptied.
  Every DA value, and the date part of every DT value, anywhere in the dataset (listed in the
  table or not) moves back by a per-patient offset of 1 to 3650 days derived from the secret
  and the original PatientID, so all studies of one patient keep their order and intervals.
  TM values are kept (a whole-day shift does not change a time of day).  Patient's Birth
  Date/Time, GPS Time Stamp and the versions of context groups and templates are not part of
  the option: their Basic action applies.  Values that are not full dates (``YYYY``,
  ``YYYYMM``, garbage) cannot be shifted and are emptied.
* **Retain Safe Private Option**, only for the (private creator, element offset) pairs given
  in ``safe_private``; every other private attribute is removed.

Pixel data is never touched (no burned-in annotation cleaning).

The action per code of the table: ``X`` remove; ``Z`` zero-length; ``D`` dummy value valid for
the VR (``"ANONYMIZED"`` for text, ``"0"`` for IS/DS, 0 for binary numbers, empty bytes for
OB/OW/UN, ``19000101``/``000000`` for dates and times outside the date option, and an empty
sequence for SQ, since a dummy item could carry what it replaces); ``U`` keyed UID.  Combined
codes take the conservative choice that keeps the file valid: ``X/Z``, ``X/D``, ``X/Z/D``
remove, ``Z/D`` empties, ``X/Z/U*`` keeps the sequence and replaces the UIDs in it.
Repeating-group entries are matched with their masks: curve groups (50xx) are removed, and an
overlay group (60xx) whose Overlay Data is removed is removed whole (its remaining module would
be invalid).  PatientID and PatientName both become the keyed pseudonym of the original
PatientID.  Beyond the table: *every* UI value is replaced (except class, transfer-syntax and
coding-scheme UIDs and UIDs under the DICOM root ``1.2.840.10008.``), group lengths are
dropped, and the AE titles, presentation addresses and private information of ``file_meta``
are removed.  In a DICOMDIR, each PATIENT record's offset applies to the records after it.

Not covered: the Clean Descriptors/Structured Content/Graphics options (descriptions are
removed, not cleaned), the Retain Patient Characteristics/Device/Institution Identity options,
burned-in text in pixels, and DICOMDIR record offsets (not recomputed after values change).

Why this and not dicognito or deid
----------------------------------
The attribute table comes from ``dicom-anonymizer`` (maintained, versioned with the standard:
``dicomfields_2026c``), but its actions are not used: its UID replacement is random, so two
runs (or two ingests of one study) would disagree.  Our UID, pseudonym and date actions are
HMAC-SHA256 keyed by a per-project secret: stable across runs and files, different between
projects, and not recomputable by anyone who has the original UIDs but not the secret.

* dicognito keeps private tags and DeviceSerialNumber (that is the Retain Device Identity
  option, not the Basic Profile), sets no DeidentificationMethodCodeSequence, and writes
  realistic-looking fake names, which makes audits for left-over PHI harder.
* deid's default recipe removes UIDs (series and studies fall apart), and its UID hash is
  unsalted, so anyone holding an original UID can recompute the replacement and re-identify.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hmac
import os
import secrets
import stat
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from typing import Any

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.datadict import DicomDictionary
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from voxelhub.errors import DeidentificationError

__all__ = [
    "PROFILE_NAME",
    "Deidentifier",
    "load_or_create_secret",
    "new_secret",
]

PROFILE_NAME: str = "PS3.15 E.1 Basic Application Level Confidentiality Profile"
"""The profile applied; first value of DeidentificationMethod (fits LO, 64 characters)."""

TABLE_VERSION = "dicomfields_2026c"
"""dicom-anonymizer's version of PS3.15 Table E.1-1 that the actions are built from."""

_SECRET_BYTES = 32
_MIN_SECRET_BYTES = 16
_MAX_SHIFT_DAYS = 3650
_DUMMY_TEXT = "ANONYMIZED"
_DUMMY_DATE = "19000101"
_DUMMY_DATETIME = "19000101000000"
_DUMMY_TIME = "000000"
_DICOM_ROOT = "1.2.840.10008."

# Codes from PS3.16 CID 7050 "De-identification Method".
_CODE_BASIC = ("113100", "Basic Application Confidentiality Profile")
_CODE_SAFE_PRIVATE = ("113111", "Retain Safe Private Option")
_CODE_MODIFIED_DATES = ("113107", "Retain Longitudinal Temporal Information Modified Dates Option")

_TAG_PATIENT_NAME = 0x00100010
_TAG_PATIENT_ID = 0x00100020
_TAG_DIRECTORY_RECORDS = 0x00041220  # DirectoryRecordSequence of a DICOMDIR
# Dates and times in the table that the modified-dates option does not cover (no "C" in
# Table E.1-1, or versions of coding resources rather than events): the Basic action stays.
_NOT_IN_DATES_OPTION = frozenset(
    {
        0x00100030,  # PatientBirthDate
        0x00100032,  # PatientBirthTime
        0x00080106,  # ContextGroupVersion
        0x00080107,  # ContextGroupLocalVersion
        0x0040DB06,  # TemplateVersion
        0x0040DB07,  # TemplateLocalVersion
        0x00160077,  # GPSTimeStamp
    }
)

# UI attributes that identify a class, syntax or coding scheme, never an instance: kept.
_KEEP_UID_TAGS = frozenset(
    {
        0x00020002,  # MediaStorageSOPClassUID
        0x00020010,  # TransferSyntaxUID
        0x00020012,  # ImplementationClassUID
        0x00041510,  # ReferencedSOPClassUIDInFile
        0x00041512,  # ReferencedTransferSyntaxUIDInFile
        0x00080016,  # SOPClassUID
        0x0008001A,  # RelatedGeneralSOPClassUID
        0x0008001B,  # OriginalSpecializedSOPClassUID
        0x00080062,  # SOPClassesInStudy
        0x0008010C,  # CodingSchemeUID
        0x00080117,  # ContextUID
        0x00080118,  # MappingResourceUID
        0x00081150,  # ReferencedSOPClassUID
    }
)

# File meta elements that name sending/receiving systems or carry private data: removed.
_DROP_FILE_META = frozenset(
    {
        0x00020016,  # SourceApplicationEntityTitle
        0x00020017,  # SendingApplicationEntityTitle
        0x00020018,  # ReceivingApplicationEntityTitle
        0x00020026,  # SourcePresentationAddress
        0x00020027,  # SendingPresentationAddress
        0x00020028,  # ReceivingPresentationAddress
        0x00020100,  # PrivateInformationCreatorUID
        0x00020102,  # PrivateInformation
    }
)

_MAX_LEN = {"AE": 16, "CS": 16, "SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240}
_TEXT_VRS = frozenset({"AE", "CS", "SH", "LO", "PN", "ST", "LT", "UT", "UC"})
_BINARY_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"})
_BYTES_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})


class _Action(Enum):
    DELETE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    UID = "U"
    KEEP_MAP_UIDS = "U*"  # keep the sequence, replace the UIDs inside (X/Z/U*)
    PSEUDONYM = "P"  # PatientID / PatientName
    DATES = "C"  # modified-dates option: shift DA/DT, keep TM


# Table category → action (see the module docstring for the combined codes).
_CATEGORY_ACTION = {
    "X_TAGS": _Action.DELETE,
    "X_Z_TAGS": _Action.DELETE,
    "X_D_TAGS": _Action.DELETE,
    "X_Z_D_TAGS": _Action.DELETE,
    "Z_TAGS": _Action.EMPTY,
    "Z_D_TAGS": _Action.EMPTY,
    "D_TAGS": _Action.DUMMY,
    "U_TAGS": _Action.UID,
    "X_Z_U_STAR_TAGS": _Action.KEEP_MAP_UIDS,
}
# When the table lists a tag twice, the more destructive action wins.
_SEVERITY = {
    _Action.DELETE: 5,
    _Action.EMPTY: 4,
    _Action.DUMMY: 3,
    _Action.UID: 2,
    _Action.KEEP_MAP_UIDS: 1,
}

_VR_CACHE: dict[int, str] = {}


def _dictionary_vr(tag: int) -> str:
    """The data dictionary VR of a standard tag ('' if unknown); ambiguous VRs as listed."""
    vr = _VR_CACHE.get(tag)
    if vr is None:
        entry = DicomDictionary.get(tag)
        vr = entry[0] if entry is not None else ""
        _VR_CACHE[tag] = vr
    return vr


def _vr_of(elem: DataElement | RawDataElement) -> str:
    """VR of an element without decoding its value (explicit VR, else the dictionary)."""
    vr = elem.VR
    if not vr or vr == "UN":
        return _dictionary_vr(int(elem.tag)) or (vr or "")
    return str(vr)


@functools.cache
def _load_table() -> tuple[dict[int, _Action], list[tuple[int, int, int, int, _Action]]]:
    """Plain tag → action, and masked (group, element, group mask, element mask, action)."""
    db = dicom_anonymization_database_selector(TABLE_VERSION)
    plain: dict[int, _Action] = {}
    masked: list[tuple[int, int, int, int, _Action]] = []
    for category, action in _CATEGORY_ACTION.items():
        for entry in db[category]:
            if len(entry) == 2:
                tag = (entry[0] << 16) | entry[1]
                old = plain.get(tag)
                if old is None or _SEVERITY[action] > _SEVERITY[old]:
                    plain[tag] = action
            elif len(entry) == 4:
                group, element, gmask, emask = entry
                masked.append((group & gmask, element & emask, gmask, emask, action))
            else:  # pragma: no cover - guards against a changed table format
                raise DeidentificationError(
                    f"unexpected entry {entry!r} in dicom-anonymizer table {TABLE_VERSION}"
                )
    return plain, masked


class Deidentifier:
    """Apply the PS3.15 Basic Application Level Confidentiality Profile with keyed actions.

    One instance holds the secret and the precomputed tag → action table; reuse it for every
    file of a project.  :meth:`deidentify` is deterministic: the same secret maps the same
    UID, PatientID and date to the same output in every run, process and file.

    Parameters
    ----------
    secret : bytes
        The project's key (at least 16 bytes; :func:`load_or_create_secret` makes 32).  Whoever
        holds it can link de-identified data back to original UIDs and PatientIDs by
        recomputing the mapping, so store it like a password.
    safe_private : iterable of (str, int), optional
        Retain Safe Private Option: (private creator, element offset 0x00-0xFF) pairs to keep,
        e.g. ``("SIEMENS CSA HEADER", 0x10)`` keeps (0029,xx10) in the block reserved by that
        creator, and the creator element itself.  Kept values are not modified (a kept private
        sequence is walked like any other: its standard elements get the profile).  Default:
        remove every private attribute.
    shift_dates : bool, optional
        PS3.15 Retain Longitudinal Temporal Information with Modified Dates Option (default
        ``True``): keep dates shifted by a per-patient offset (see :meth:`date_offset_days`)
        and keep times.  ``False`` applies the Basic Profile alone: dates are removed, emptied
        or set to the dummy 19000101.

    Raises
    ------
    DeidentificationError
        If the secret is not bytes or shorter than 16 bytes, or a safe-private pair is
        malformed.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        safe_private: Iterable[tuple[str, int]] = (),
        shift_dates: bool = True,
    ) -> None:
        if not isinstance(secret, bytes | bytearray):
            raise DeidentificationError(
                f"the de-identification secret must be bytes, not {type(secret).__name__}"
            )
        if len(secret) < _MIN_SECRET_BYTES:
            raise DeidentificationError(
                f"the de-identification secret has {len(secret)} bytes; use at least "
                f"{_MIN_SECRET_BYTES} (new_secret() makes {_SECRET_BYTES})"
            )
        self._secret = bytes(secret)
        self._shift_dates = bool(shift_dates)
        safe: set[tuple[str, int]] = set()
        for pair in safe_private:
            try:
                creator, offset = pair
            except (TypeError, ValueError):
                raise DeidentificationError(
                    f"safe_private entries are (private creator, element offset) pairs, got {pair!r}"
                ) from None
            if not isinstance(creator, str) or not isinstance(offset, int):
                raise DeidentificationError(
                    f"safe_private entry {pair!r} must be (str, int), e.g. ('SIEMENS CSA HEADER', 0x10)"
                )
            if not 0 <= offset <= 0xFF:
                raise DeidentificationError(
                    f"safe_private offset {offset:#x} for {creator!r} is outside 0x00-0xFF"
                )
            safe.add((creator.strip(), offset))
        self._safe_private = frozenset(safe)

        plain, masked = _load_table()
        actions: dict[int, _Action] = {}
        for tag, action in plain.items():
            if (
                self._shift_dates
                and tag not in _NOT_IN_DATES_OPTION
                and _dictionary_vr(tag) in ("DA", "DT", "TM")
            ):
                action = _Action.DATES
            actions[tag] = action
        actions[_TAG_PATIENT_ID] = _Action.PSEUDONYM
        actions[_TAG_PATIENT_NAME] = _Action.PSEUDONYM
        for tag in _DROP_FILE_META:
            actions[tag] = _Action.DELETE
        self._actions = actions
        self._masked = tuple(masked)
        self._profile_tags = frozenset(
            tag
            for tag, action in actions.items()
            # times are kept under the modified-dates option
            if not (action is _Action.DATES and _dictionary_vr(tag) == "TM")
        )

    # ------------------------------------------------------------------ keyed primitives

    def _mac(self, message: bytes) -> bytes:
        return hmac.digest(self._secret, message, "sha256")

    def map_uid(self, uid: str) -> str:
        """The replacement of one UID: ``2.25.<128-bit HMAC-SHA256 of the UID>``.

        Parameters
        ----------
        uid : str
            An original UID (surrounding spaces and NUL padding are ignored).

        Returns
        -------
        str
            A valid UID of at most 44 characters, the same for the same UID and secret.  An
            empty UID and UIDs under the DICOM root ``1.2.840.10008.`` (standard SOP classes,
            transfer syntaxes, coding schemes) are returned unchanged.
        """
        uid = uid.strip(" \x00")
        if not uid or uid.startswith(_DICOM_ROOT):
            return uid
        digest = hmac.digest(self._secret, uid.encode(), "sha256")
        return "2.25." + str(int.from_bytes(digest[:16], "big"))

    def pseudonym(self, patient_id: str) -> str:
        """The keyed pseudonym written to PatientID and PatientName.

        Parameters
        ----------
        patient_id : str
            The original PatientID (may be empty).

        Returns
        -------
        str
            ``"VH"`` followed by 16 hex digits of HMAC-SHA256(secret, ``b"pid:"`` + id).
        """
        return "VH" + self._mac(b"pid:" + patient_id.encode()).hex()[:16]

    def source_ref(self, relative_path: str) -> str:
        """The keyed reference that stands for an input file's name in a de-identified project.

        Folder and file names often name the patient, so a de-identified project never stores
        them; reports and the catalog carry this reference instead.  Whoever holds the secret
        finds the file again by computing it for every file of the same folder
        (``voxelhub locate``); without the secret it reveals nothing about the name.

        Parameters
        ----------
        relative_path : str
            The file's path relative to the folder given to the ingest (a zip member as
            ``archive.zip!/member``), with ``/`` separators.

        Returns
        -------
        str
            16 hex digits of HMAC-SHA256(secret, ``b"src:"`` + path).
        """
        return self._mac(b"src:" + relative_path.encode()).hex()[:16]

    def date_offset_days(self, patient_id: str) -> int:
        """Days added to every date of one patient under the modified-dates option.

        Parameters
        ----------
        patient_id : str
            The original PatientID (may be empty).

        Returns
        -------
        int
            A keyed offset in [-3650, -1]: dates always move back, by the same amount for
            every study of the patient, so intervals and order are preserved.
        """
        value = int.from_bytes(self._mac(b"date:" + patient_id.encode())[:8], "big")
        return -(1 + value % _MAX_SHIFT_DAYS)

    def profile_tags(self) -> frozenset[int]:
        """Every plain tag whose value this instance removes, empties or replaces.

        Returns
        -------
        frozenset of int
            Tags as ``0xGGGGEEEE`` integers from Table E.1-1 (repeating-group entries such as
            (50xx,xxxx) and (60xx,4000) are not plain tags and are left out), plus PatientID,
            PatientName and the file meta AE titles.  Times kept under the modified-dates
            option are not included; sequences marked X/Z/U* are (their UIDs are replaced).
        """
        return self._profile_tags

    @property
    def shift_dates(self) -> bool:
        """Whether the Retain Longitudinal Temporal Information with Modified Dates Option is on."""
        return self._shift_dates

    @property
    def retain_longitudinal_modified_dates(self) -> bool:
        """Alias of :attr:`shift_dates`, named after the PS3.15 option."""
        return self._shift_dates

    # ------------------------------------------------------------------ dataset walk

    def deidentify(self, ds: Dataset) -> Dataset:
        """De-identify a dataset in place (headers only; pixel data is not touched).

        Parameters
        ----------
        ds : pydicom.Dataset
            A dataset, typically from ``pydicom.dcmread``; its ``file_meta`` (if any) is
            processed too, so MediaStorageSOPInstanceUID follows SOPInstanceUID.

        Returns
        -------
        pydicom.Dataset
            The same object, modified: table actions applied at every nesting level, private
            attributes removed (except ``safe_private``), PatientIdentityRemoved = YES,
            DeidentificationMethod and DeidentificationMethodCodeSequence added (appended to
            any existing ones), LongitudinalTemporalInformationModified = MODIFIED (dates
            shifted) or REMOVED.

        Notes
        -----
        Running it twice maps the UIDs twice; apply it once to original data.
        """
        patient_id = _text(ds[_TAG_PATIENT_ID]) if _TAG_PATIENT_ID in ds else ""
        offset = self.date_offset_days(patient_id) if self._shift_dates else 0
        self._walk(ds, patient_id, offset)
        file_meta = getattr(ds, "file_meta", None)
        if isinstance(file_meta, Dataset):
            self._walk(file_meta, patient_id, offset)
        self._mark(ds)
        return ds

    def _walk(self, ds: Dataset, patient_id: str, offset: int) -> None:
        present = ds.keys()  # live view: sees deletions made below
        # PatientName follows the PatientID of its own dataset, read before either changes.
        local_pid = _text(ds[_TAG_PATIENT_ID]) if _TAG_PATIENT_ID in present else patient_id
        actions = self._actions
        creators: dict[tuple[int, int], str] | None = None
        for tag, elem in list(ds.items()):
            if tag not in present:
                continue  # removed with its overlay group
            group = tag >> 16
            element = tag & 0xFFFF
            if group & 1:
                if self._safe_private:
                    if creators is None:
                        creators = self._private_creators(ds)
                    if self._keep_private(ds, tag, creators):
                        if _vr_of(elem) == "SQ":
                            self._walk_sequence(ds, tag, patient_id, offset)
                        continue
                del ds[tag]
                continue
            if element == 0 and group != 0x0002:
                del ds[tag]  # group length: stale once elements are removed
                continue
            action = actions.get(tag)
            if action is None and self._masked:
                action = self._masked_action(group, element)
                if action is _Action.DELETE and element == 0x3000 and group & 0xFF00 == 0x6000:
                    # Overlay Data removed: drop the whole overlay plane, or what is left of
                    # the Overlay Plane Module (rows, columns, origin...) is invalid.
                    for other in [t for t in list(present) if t >> 16 == group]:
                        del ds[other]
                    continue
            if action is None:
                vr = _vr_of(elem)
                if vr == "UI":
                    if tag not in _KEEP_UID_TAGS:
                        self._map_uids(ds, tag, elem)
                elif vr == "SQ":
                    self._walk_sequence(ds, tag, patient_id, offset)
                elif self._shift_dates and vr in ("DA", "DT"):
                    self._shift(ds, tag, elem, vr, offset)
                continue
            self._apply(ds, tag, elem, action, patient_id, local_pid, offset)

    def _apply(
        self,
        ds: Dataset,
        tag: int,
        elem: DataElement | RawDataElement,
        action: _Action,
        patient_id: str,
        local_pid: str,
        offset: int,
    ) -> None:
        if action is _Action.DELETE:
            del ds[tag]
            return
        vr = _vr_of(elem)
        if vr == "SQ":
            if action in (_Action.KEEP_MAP_UIDS, _Action.UID):
                self._walk_sequence(ds, tag, patient_id, offset)
            else:  # Z or D on a sequence: an empty sequence (a dummy item could leak)
                ds[tag].value = []
        elif action in (_Action.UID, _Action.KEEP_MAP_UIDS):
            if vr == "UI":
                self._map_uids(ds, tag, elem)
            else:
                _put_empty(ds, tag, elem)
        elif action is _Action.EMPTY:
            _put_empty(ds, tag, elem)
        elif action is _Action.PSEUDONYM:
            # PatientID, or PatientName: the pseudonym of this dataset's PatientID
            pid = _text(ds[tag]) if tag == _TAG_PATIENT_ID else local_pid
            _put_strings(ds, tag, elem, [self.pseudonym(pid)], b" ")
        elif action is _Action.DATES:
            if vr in ("DA", "DT"):
                self._shift(ds, tag, elem, vr, offset)
            elif vr != "TM":
                _put_empty(ds, tag, elem)
        elif action is _Action.DUMMY:
            self._dummy(ds, tag, elem, vr)

    def _walk_sequence(self, ds: Dataset, tag: int, patient_id: str, offset: int) -> None:
        value = ds[tag].value
        if not isinstance(value, Sequence | list):
            return
        records = tag == _TAG_DIRECTORY_RECORDS
        for item in value:
            if not isinstance(item, Dataset):
                continue
            if records and _TAG_PATIENT_ID in item:
                # A DICOMDIR lists several patients: a PATIENT record and the records after
                # it (its studies, series and images, written depth-first) take its offset.
                patient_id = _text(item[_TAG_PATIENT_ID])
                if self._shift_dates:
                    offset = self.date_offset_days(patient_id)
            self._walk(item, patient_id, offset)

    def _masked_action(self, group: int, element: int) -> _Action | None:
        for g, e, gmask, emask, action in self._masked:
            if group & gmask == g and element & emask == e:
                return action
        return None

    # ------------------------------------------------------------------ private attributes

    @staticmethod
    def _private_creators(ds: Dataset) -> dict[tuple[int, int], str]:
        creators: dict[tuple[int, int], str] = {}
        for tag in list(ds.keys()):
            group, element = tag >> 16, tag & 0xFFFF
            if group & 1 and 0x0010 <= element <= 0x00FF:
                creators[(group, element)] = _text(ds[tag])
        return creators

    def _keep_private(self, ds: Dataset, tag: int, creators: dict[tuple[int, int], str]) -> bool:
        group, element = tag >> 16, tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:
            # A creator: keep it when an element of its block is kept.
            name = creators.get((group, element), "")
            return any(
                other >> 16 == group
                and (other & 0xFFFF) >> 8 == element
                and (name, other & 0xFF) in self._safe_private
                for other in list(ds.keys())
            )
        block = element >> 8
        if block < 0x10:
            return False
        owner = creators.get((group, block))
        return owner is not None and (owner, element & 0xFF) in self._safe_private

    # ------------------------------------------------------------------ value actions

    def _map_uids(self, ds: Dataset, tag: int, elem: DataElement | RawDataElement) -> None:
        values = _strings(ds, tag, elem)
        mapped = [self.map_uid(v) for v in values]
        if mapped != values:
            _put_strings(ds, tag, elem, mapped, b"\x00")

    def _shift(
        self, ds: Dataset, tag: int, elem: DataElement | RawDataElement, vr: str, offset: int
    ) -> None:
        values = _strings(ds, tag, elem)
        if not values:
            return
        shift = _shift_date if vr == "DA" else _shift_datetime
        shifted = [shift(v, offset) for v in values]
        # A value that is not a date cannot be shifted, so the element is emptied.
        _put_strings(ds, tag, elem, shifted if all(shifted) else [], b" ")

    def _dummy(self, ds: Dataset, tag: int, elem: DataElement | RawDataElement, vr: str) -> None:
        if vr in _TEXT_VRS:
            _put_strings(ds, tag, elem, [_DUMMY_TEXT[: _MAX_LEN.get(vr, 64)]], b" ")
        elif vr in ("IS", "DS"):
            _put_strings(ds, tag, elem, ["0"], b" ")
        elif vr in ("DA", "DT", "TM"):
            # Dates the modified-dates option covers never get here when it is on.
            dummy = {"DA": _DUMMY_DATE, "DT": _DUMMY_DATETIME, "TM": _DUMMY_TIME}[vr]
            _put_strings(ds, tag, elem, [dummy], b" ")
        elif vr == "UI":
            self._map_uids(ds, tag, elem)
        elif vr == "AS":
            _put_strings(ds, tag, elem, ["000Y"], b" ")
        elif vr in _BINARY_NUMBER_VRS:
            ds[tag].value = 0
        elif vr in _BYTES_VRS:
            ds[tag].value = b""
        else:
            _put_empty(ds, tag, elem)

    # ------------------------------------------------------------------ marking

    def _mark(self, ds: Dataset) -> None:
        options = []
        codes = [_CODE_BASIC]
        if self._shift_dates:
            options.append("Retain Longitudinal Modified Dates Option")
            codes.append(_CODE_MODIFIED_DATES)
        if self._safe_private:
            options.append("Retain Safe Private Option")
            codes.append(_CODE_SAFE_PRIVATE)
        method = [PROFILE_NAME, *options, "VoxelHub keyed HMAC-SHA256 UIDs and pseudonyms"]

        ds.PatientIdentityRemoved = "YES"
        old_method = ds.get("DeidentificationMethod")
        if old_method:
            previous = [str(v) for v in old_method] if _is_multi(old_method) else [str(old_method)]
            method = previous + [m for m in method if m not in previous]
        ds.DeidentificationMethod = method

        old_codes = ds.get("DeidentificationMethodCodeSequence")
        items = list(old_codes) if old_codes else []
        present = {str(item.get("CodeValue", "")) for item in items}
        for value, meaning in codes:
            if value in present:
                continue
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if self._shift_dates else "REMOVED"


# ---------------------------------------------------------------------- helpers


def _is_multi(value: Any) -> bool:
    return isinstance(value, MultiValue | list | tuple)


def _text(elem: Any) -> str:
    """The value of a (raw or decoded) element as text; '' if absent or empty."""
    if elem is None:
        return ""
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("latin-1").strip(" \x00")
    if _is_multi(value):
        return "\\".join(str(v) for v in value)
    return str(value).strip(" \x00")


def _strings(ds: Dataset, tag: int, elem: DataElement | RawDataElement) -> list[str]:
    """The values of a text element, decoded without pydicom's conversion when still raw."""
    if isinstance(elem, RawDataElement) and elem.value is not None and elem.VR != "UN":
        try:
            text = elem.value.decode("ascii").strip(" \x00")
        except UnicodeDecodeError:
            pass  # not ASCII: let pydicom decode it with the character set
        else:
            return [v.strip(" \x00") for v in text.split("\\")] if text else []
    value = ds[tag].value
    if value is None or value == "":
        return []
    if _is_multi(value):
        return [str(v).strip(" \x00") for v in value]
    return [str(value).strip(" \x00")]


def _put_strings(
    ds: Dataset, tag: int, elem: DataElement | RawDataElement, values: list[str], pad: bytes
) -> None:
    """Replace the values of a text element (ASCII values only).

    A still-raw element is replaced by a raw element holding the new encoded bytes: no
    decoding or validation round trip, which is most of the cost of de-identifying a header.
    """
    if isinstance(elem, RawDataElement) and elem.VR != "UN":
        data = "\\".join(values).encode("ascii")
        if len(data) % 2:
            data += pad
        ds[tag] = elem._replace(value=data, length=len(data))
        return
    converted = ds[tag]
    if not values:
        converted.value = empty_value_for_VR(converted.VR)
    else:
        converted.value = values[0] if len(values) == 1 else values


def _put_empty(ds: Dataset, tag: int, elem: DataElement | RawDataElement) -> None:
    """Zero-length value, keeping the element."""
    if isinstance(elem, RawDataElement) and elem.VR not in ("UN", "SQ", None):
        ds[tag] = elem._replace(value=b"", length=0)
        return
    converted = ds[tag]
    converted.value = [] if converted.VR == "SQ" else empty_value_for_VR(converted.VR)


def _shift_date(value: str, offset: int) -> str:
    """YYYYMMDD (or ACR-NEMA YYYY.MM.DD) moved by ``offset`` days; '' if not a date."""
    text = value.strip()
    if len(text) == 10 and text[4] == "." and text[7] == ".":
        text = text.replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return ""
    try:
        day = _dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
        day += _dt.timedelta(days=offset)
    except (ValueError, OverflowError):
        return ""
    return f"{day.year:04d}{day.month:02d}{day.day:02d}"


def _shift_datetime(value: str, offset: int) -> str:
    """The date part of a DT moved by ``offset`` days, time and UTC offset kept."""
    text = value.strip()
    if len(text) < 8:
        return ""  # year or year-month only: cannot be shifted by days, so removed
    date = _shift_date(text[:8], offset)
    return date + text[8:] if date else ""


# ---------------------------------------------------------------------- secrets


def new_secret() -> bytes:
    """A new random de-identification secret.

    Returns
    -------
    bytes
        32 bytes from :func:`secrets.token_bytes`.
    """
    return secrets.token_bytes(_SECRET_BYTES)


def load_or_create_secret(path: str | os.PathLike[str]) -> bytes:
    """Read a project's secret, creating it (mode 0600) on first use.

    Parameters
    ----------
    path : str or os.PathLike
        The secret file.  Missing parent folders are created with mode 0700.

    Returns
    -------
    bytes
        The secret (32 bytes when created here).

    Raises
    ------
    DeidentificationError
        If the file is readable or writable by group or others, is not a regular file, is
        shorter than 16 bytes, or cannot be read or written.
    """
    target = Path(path)
    try:
        if not target.parent.exists():
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(target.parent, 0o700)
        secret = new_secret()
        flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(target, flags, 0o600)
        except FileExistsError:
            return _read_secret(target)
        try:
            os.write(fd, secret)
            os.fsync(fd)
        finally:
            os.close(fd)
        return secret
    except DeidentificationError:
        raise
    except OSError as exc:
        raise DeidentificationError(
            f"cannot create the de-identification secret {target}: {exc}"
        ) from exc


def _read_secret(target: Path) -> bytes:
    try:
        info = os.stat(target)
        if not stat.S_ISREG(info.st_mode):
            raise DeidentificationError(f"the de-identification secret {target} is not a file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            raise DeidentificationError(
                f"the de-identification secret {target} has mode {mode:04o}: group or others "
                f"can access it; run `chmod 600 {target}` after checking who read it"
            )
        data = target.read_bytes()
    except DeidentificationError:
        raise
    except OSError as exc:
        raise DeidentificationError(
            f"cannot read the de-identification secret {target}: {exc}"
        ) from exc
    if len(data) < _MIN_SECRET_BYTES:
        raise DeidentificationError(
            f"the de-identification secret {target} holds {len(data)} bytes (at least "
            f"{_MIN_SECRET_BYTES} needed); it is truncated or not a secret file"
        )
    return data
