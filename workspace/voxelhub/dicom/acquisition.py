"""Acquisition facts of one DICOM header: what tells the volumes of a 4-D MR series apart.

Diffusion weighting, ASL label/control, GE ``epi_pepolar`` polarity and the Philips
floating-point scale are read per frame. :func:`sidecar` gives the non-identifying acquisition
block of a BIDS sidecar. The rules are dcm2niix's (rordenlab/dcm2niix): ``console/nii_dicom.cpp``
``readDICOMx`` for which tag means what, and ``console/nii_dicom_batch.cpp`` (``geCorrectBvecs``,
``siemensPhilipsCorrectBvecs``, ``nii_SaveBIDSX``) for what it does with them. Each rule names the
function it follows; where this module differs it says so and why.

Nothing here raises on odd input. Vendors' private tags get damaged, stripped or re-encoded as
UN by anonymisers, so each read is guarded and a missing or garbled value gives ``None``.

Private tags are found through their private creator block, compared case-insensitively like
dcm2niix's creator remapping (``salvageAgfa``). A block moved to another slot, e.g.
``(2005,14xx)`` under ``(2005,0015)``, is still found. dcm2niix reads private tags by their tag
number. This module does that only where the group has no private creator at all (stripped by an
anonymiser) and ``Manufacturer`` names the vendor. Otherwise a creator that is present but
different would make another vendor's element look like this one.
"""

from __future__ import annotations

import functools
import math
import re
import struct
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue


@functools.cache
def _csa() -> Any:
    """nibabel's Siemens CSA header parser, imported on first use (the header index of a
    non-Siemens archive never needs nibabel, and `voxelhub ingest` starts faster without it)."""
    with warnings.catch_warnings():
        # nibabel.nicom warns on import that its DICOM *readers* are experimental; only the
        # CSA header parser is used here.
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import csareader
    return csareader


@dataclass(frozen=True)
class Diffusion:
    """Diffusion weighting of one frame (one volume of a DWI series).

    ``frame`` says which axes the gradient components are measured along:

    * ``"patient"``: DICOM patient axes, LPS (+x toward the patient's left, +y posterior,
      +z head), as the public DiffusionGradientOrientation (0018,9089) is defined;
    * ``"image"``: the image's own axes: row direction ``r`` and column direction ``c``
      (ImageOrientationPatient's two vectors), and slice normal ``n = r x c``.

    FSL bvecs for dcm2niix's NIfTI (rows flipped, determinant < 0) are ``(g.r, -(g.c), g.n)``
    for a patient-frame ``g`` and ``(x, -y, z)`` for an image-frame one, when the slices run along
    ``+n``. The gradient is a unit vector. It is ``None`` when b is 0, when the volume is
    isotropic (trace/ADC) or when the direction is unknown.
    """

    b_value: float
    """s/mm^2; a b0 volume gives 0.0 (a vendor's nominal 'b0' such as UIH's 1.25 is kept)."""
    gradient: tuple[float, float, float] | None
    frame: str
    """``"patient"`` or ``"image"`` (see the class docstring)."""
    source: str
    """Where the values came from, e.g. ``"(0018,9087)/(0018,9089)"`` or ``"Siemens CSA"``."""


class _Private(NamedTuple):
    """A private element: group, creator, conventional block (for by-tag reads), offset."""

    group: int
    creator: str
    block: int
    offset: int


_GE_ACQU = "GEMS_ACQU_01"
_GE_PARM = "GEMS_PARM_01"
_PHILIPS_001 = "Philips MR Imaging DD 001"
_PHILIPS_005 = "Philips MR Imaging DD 005"
_UIH = "Image Private Header"

_CSA_IMAGE = _Private(0x0029, "SIEMENS CSA HEADER", 0x10, 0x10)
_SIEMENS_MOSAIC_N = _Private(0x0019, "SIEMENS MR HEADER", 0x10, 0x0A)
_SIEMENS_B = _Private(0x0019, "SIEMENS MR HEADER", 0x10, 0x0C)
_SIEMENS_G = _Private(0x0019, "SIEMENS MR HEADER", 0x10, 0x0E)
_SIEMENS_BWPPPE = _Private(0x0019, "SIEMENS MR HEADER", 0x10, 0x28)
_SIEMENS_BWPPPE_XA = _Private(0x0021, "SIEMENS MR SDI 02", 0x11, 0x53)
_SIEMENS_PAT_XA = _Private(0x0021, "SIEMENS MR SDS 01", 0x10, 0x09)
_SIEMENS_PAT = _Private(0x0051, "SIEMENS MR HEADER", 0x10, 0x11)
_SIEMENS_XA_TEXT = {  # XA: public (0018,0020/21/22) absent, dcm2niix falls back to these
    0x00180020: _Private(0x0021, "SIEMENS MR SDS 01", 0x10, 0x5A),
    0x00180021: _Private(0x0021, "SIEMENS MR SDS 01", 0x10, 0x5B),
    0x00180022: _Private(0x0021, "SIEMENS MR SDS 01", 0x10, 0x5C),
}
_GE_PSD = _Private(0x0019, _GE_ACQU, 0x10, 0x9C)
_GE_INTERNAL_PSD = _Private(0x0019, _GE_ACQU, 0x10, 0x9E)
_GE_USER_DATA_12 = _Private(0x0019, _GE_ACQU, 0x10, 0xB3)
_GE_GRADIENT = tuple(_Private(0x0019, _GE_ACQU, 0x10, e) for e in (0xBB, 0xBC, 0xBD))
_GE_ESP = _Private(0x0043, _GE_PARM, 0x10, 0x2C)
_GE_B = _Private(0x0043, _GE_PARM, 0x10, 0x39)
_GE_GROUP_DELAY = _Private(0x0043, _GE_PARM, 0x10, 0x7C)
_GE_ASSET = _Private(0x0043, _GE_PARM, 0x10, 0x83)
_GE_IMAGE_TYPE = _Private(0x0043, _GE_PARM, 0x10, 0x2F)
_PHILIPS_B = _Private(0x2001, "Philips Imaging DD 001", 0x10, 0x03)
_PHILIPS_SCALE = _Private(0x2005, _PHILIPS_001, 0x10, 0x0E)
_PHILIPS_GRADIENT = tuple(_Private(0x2005, _PHILIPS_001, 0x10, e) for e in (0xB0, 0xB1, 0xB2))
_PHILIPS_PER_FRAME = _Private(0x2005, _PHILIPS_005, 0x14, 0x0F)
_PHILIPS_LABEL = _Private(0x2005, _PHILIPS_005, 0x14, 0x29)
_UIH_B = _Private(0x0065, _UIH, 0x10, 0x09)
_UIH_PARALLEL = _Private(0x0065, _UIH, 0x10, 0x0D)
_UIH_GRADIENT = _Private(0x0065, _UIH, 0x10, 0x37)
_UIH_GRID_N = _Private(0x0065, _UIH, 0x10, 0x50)
_UIH_VFRAME = _Private(0x0065, _UIH, 0x10, 0x51)

_SHARED_GROUPS = 0x52009229
_PER_FRAME_GROUPS = 0x52009230
_MR_DIFFUSION = 0x00189117
_DIFFUSION_B = 0x00189087
_DIFFUSION_GRADIENT_SEQ = 0x00189076
_DIFFUSION_ORIENTATION = 0x00189089
_DIFFUSION_DIRECTIONALITY = 0x00189075

# dcm2niix dcmStrManufacturer(): the first two letters of Manufacturer (0008,0070) name the vendor.
_VENDOR_PREFIX = {
    "SI": "Siemens",
    "CP": "Siemens",
    "GE": "GE",
    "HI": "Hitachi",
    "ME": "Mediso",
    "PH": "Philips",
    "TO": "Toshiba",
    "CA": "Canon",
    "UI": "UIH",
    "BR": "Bruker",
    "MR": "MRSolutions",
    "HY": "Hyperfine",
}

# --- guarded readers ---------------------------------------------------------------------


def _get(ds: Dataset | None, tag: int) -> Any:
    """Value of element ``tag`` of ``ds`` (not nested); None if absent, empty or unreadable."""
    if ds is None:
        return None
    try:
        if tag not in ds:
            return None
        value = ds[tag].value
    except Exception:  # a damaged raw element fails when pydicom converts it
        return None
    if value is None:
        return None
    if isinstance(value, str) and not value.strip(" \x00"):
        return None
    if isinstance(value, bytes) and not value.strip(b" \x00"):
        return None
    if isinstance(value, list | tuple | MultiValue) and len(value) == 0:
        return None
    return value


def _item(ds: Dataset | None, tag: int) -> Dataset | None:
    """First item of sequence ``tag`` of ``ds``, or None."""
    seq = _get(ds, tag)
    try:
        first = seq[0]
    except Exception:
        return None
    return first if isinstance(first, Dataset) else None


def _text(value: Any) -> str | None:
    """A value as text. Multi-values are joined with backslashes, as dcm2niix writes them."""
    if value is None:
        return None
    if isinstance(value, list | tuple | MultiValue):
        joined = "\\".join(_text(v) or "" for v in value).strip()
        return joined or None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    text = str(value).strip(" \x00")
    return text or None


def _to_float(value: Any) -> float | None:
    """One finite number from a number, a numeric string or ASCII bytes."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        value = value.strip(" \x00")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _numbers(value: Any, binary: str = "") -> tuple[float, ...] | None:
    """Every number of a value; None if empty or any one is not a finite number.

    ``binary`` is the struct code ("d" for FD, "f" for FL) used when the element arrives as raw
    bytes (VR UN, e.g. an implicit-VR file with a private tag pydicom does not know). Without it,
    raw bytes are read as backslash-separated ASCII (IS/DS).
    """
    if value is None:
        return None
    items: list[Any]
    if isinstance(value, bytes):
        if binary:
            size = struct.calcsize("<" + binary)
            if not value or len(value) % size:
                return None
            items = list(struct.unpack(f"<{len(value) // size}{binary}", value))
        else:
            try:
                items = value.decode("ascii").strip(" \x00").split("\\")
            except UnicodeDecodeError:
                return None
    elif isinstance(value, str):
        items = value.split("\\")
    elif isinstance(value, list | tuple | MultiValue):
        items = list(value)
    else:
        items = [value]
    numbers = [_to_float(v) for v in items]
    if not numbers or any(n is None for n in numbers):
        return None
    return tuple(n for n in numbers if n is not None)


def _number(value: Any, binary: str = "") -> float | None:
    """The first number of a (multi-)value, or None."""
    numbers = _numbers(value, binary)
    return numbers[0] if numbers else None


def _positive(value: Any) -> float | None:
    number = _number(value)
    return number if number is not None and number > 0 else None


def _creator_tags(ds: Dataset, group: int) -> Iterator[tuple[int, str]]:
    """(slot, creator text) of every private creator of ``group`` in ``ds``."""
    for tag in list(ds.keys()):
        if tag.group == group and 0x10 <= tag.element <= 0xFF:
            text = _text(_get(ds, int(tag)))
            if text is not None:
                yield tag.element, text


def _private(ds: Dataset | None, spec: _Private, by_tag: bool = False) -> Any:
    """Value of a private element, found through its creator block; None if absent.

    ``by_tag``: when the group has no creator at all, read the conventional tag number (block
    ``spec.block``), as dcm2niix does. The caller passes True only when Manufacturer names the
    vendor.
    """
    if ds is None:
        return None
    try:
        # nothing of that group: cheaper to see than a creator lookup that fails (iterating a
        # Dataset yields elements; its keys are the tags)
        if not any(tag >> 16 == spec.group for tag in ds.keys()):  # noqa: SIM118
            return None
        try:
            tag = int(ds.private_block(spec.group, spec.creator).get_tag(spec.offset))
            return _get(ds, tag)
        except Exception:  # creator absent here (KeyError) or not stored in canonical form
            pass
        want = spec.creator.upper()
        creators = list(_creator_tags(ds, spec.group))
        for slot, text in creators:
            if text.upper() == want:
                return _get(ds, (spec.group << 16) | (slot << 8) | spec.offset)
        if by_tag and not creators:
            return _get(ds, (spec.group << 16) | (spec.block << 8) | spec.offset)
    except Exception:
        return None
    return None


def _vendor(ds: Dataset | None) -> str | None:
    """The vendor, normalised as dcm2niix's dcmStrManufacturer() does, or None."""
    text = _text(_get(ds, 0x00080070))
    if text is None:
        return None
    upper = text.upper()
    if upper.startswith("UNITED IMAGING"):
        return "UIH"
    return _VENDOR_PREFIX.get(upper[:2])


def _groups(ds: Dataset) -> Iterator[Dataset]:
    """The shared and the first per-frame functional-group items of an Enhanced image."""
    for tag in (_SHARED_GROUPS, _PER_FRAME_GROUPS):
        item = _item(ds, tag)
        if item is not None:
            yield item


def _nested(ds: Dataset) -> Iterator[Dataset]:
    """Enhanced images: the shared and first per-frame group items, and their macros' items."""
    for holder in _groups(ds):
        yield holder
        try:
            elements = list(holder)
        except Exception:
            continue
        for element in elements:
            if element.VR == "SQ":
                item = _item(holder, int(element.tag))
                if item is not None:
                    yield item


def _find(ds: Dataset, tag: int) -> Any:
    """``tag`` at the top level, else inside the functional-group macros of an Enhanced image.

    Enhanced MR keeps TR, TE, flip angle etc. one level down, e.g. in the shared
    MRTimingAndRelatedParametersSequence.
    """
    value = _get(ds, tag)
    if value is None:
        for holder in _nested(ds):
            value = _get(holder, tag)
            if value is not None:
                break
    return value


def _find_private(ds: Dataset, spec: _Private, by_tag: bool = False) -> Any:
    """A private element at the top level, else in the functional groups (Siemens XA)."""
    value = _private(ds, spec, by_tag)
    if value is None:
        for holder in _nested(ds):
            value = _private(holder, spec)
            if value is not None:
                break
    return value


def _pe_direction(ds: Dataset) -> str | None:
    """InPlanePhaseEncodingDirection (0018,1312) as "COL"/"ROW" (dcm2niix reads its 1st letter)."""
    text = _text(_find(ds, 0x00181312))
    if text is None:
        return None
    first = text[0].upper()
    return "COL" if first == "C" else "ROW" if first == "R" else None


# --- diffusion ---------------------------------------------------------------------------


def _unit(vector: tuple[float, ...] | None) -> tuple[float, float, float] | None:
    if vector is None or len(vector) != 3:
        return None
    norm = math.sqrt(sum(v * v for v in vector))
    if not math.isfinite(norm) or norm < 1e-6:  # zero vector: b0 or isotropic (trace/ADC)
        return None
    return (vector[0] / norm, vector[1] / norm, vector[2] / norm)


def _diffusion(
    b: float | None, vector: tuple[float, ...] | None, frame: str, source: str
) -> Diffusion | None:
    if b is None or b < 0:
        return None
    return Diffusion(float(b), None if b == 0 else _unit(vector), frame, source)


def _logical_to_image(
    freq: float | None, phase: float | None, slice_: float | None, pe: str | None
) -> tuple[float, float, float] | None:
    """A vector on the (frequency, phase, slice) axes, on the image axes (row, column, normal).

    dcm2niix geCorrectBvecs(), whose output is verified on GE and Canon data. With COL phase
    encoding the frequency axis is the row direction and the phase axis the column direction.
    With ROW phase encoding they swap; dcm2niix warns that this case is untested. The signs
    reproduce dcm2niix's bvecs. Antipodal vectors are the same diffusion direction.
    """
    if freq is None or phase is None or slice_ is None:
        return None
    if pe == "COL":
        return (-freq, -phase, slice_)
    if pe == "ROW":
        return (-phase, freq, slice_)
    return None


_PUBLIC = "(0018,9087)/(0018,9089)"


def _public(item: Dataset | None) -> tuple[Diffusion | None, bool]:
    """Public DiffusionBValue/DiffusionGradientOrientation of one item.

    Also says whether the item has b > 0 with a direction that should exist but is missing. GE
    from RX27 and Canon write 0018,9087 and keep the vector in their private tags.
    """
    b = _number(_get(item, _DIFFUSION_B), "d")
    if b is None or b < 0:
        return None, False
    directionality = (_text(_get(item, _DIFFUSION_DIRECTIONALITY)) or "").upper()
    # dcm2niix set_directionality0018_9075(): anything but DIRECTIONAL/BMATRIX has no direction.
    isotropic = directionality in ("ISOTROPIC", "NONE")
    vector = None
    if not isotropic:
        orientation = _get(_item(item, _DIFFUSION_GRADIENT_SEQ), _DIFFUSION_ORIENTATION)
        if orientation is None:
            orientation = _get(item, _DIFFUSION_ORIENTATION)
        vector = _numbers(orientation, "d")
    found = _diffusion(b, vector, "patient", _PUBLIC)
    return found, found is not None and found.gradient is None and b > 0 and not isotropic


def _public_items(ds: Dataset, frame_item: Dataset | None) -> Iterator[Dataset | None]:
    yield _item(frame_item, _MR_DIFFUSION)  # Enhanced: this frame's MRDiffusionSequence
    yield _item(_item(ds, _SHARED_GROUPS), _MR_DIFFUSION)  # then the shared groups
    yield _item(ds, _MR_DIFFUSION)
    yield ds  # classic images carry 0018,9087/9089 (and 0018,9076) at the top level


def _siemens(ds: Dataset, frame_item: Dataset | None, vendor: str | None) -> Diffusion | None:
    """Siemens, as dcm2niix readCSAImageHeader() and readDICOMx().

    The CSA image header (0029,1010) B_value/DiffusionGradientDirection is read first, then the
    SIEMENS MR HEADER (0019,100C)/(0019,100E). Both are in the patient frame: dcm2niix's
    siemensPhilipsCorrectBvecs() projects them onto the image axes. The private creator is
    matched; XA10 mosaics may lack Manufacturer, and the creators are Siemens' own.
    """
    by_tag = vendor == "Siemens"
    raw = _private(ds, _CSA_IMAGE, by_tag)
    if isinstance(raw, bytes):
        b: float | None = None
        vector: tuple[float, ...] | None = None
        try:
            csareader = _csa()
            csa = csareader.read(raw)
            b = _to_float(csareader.get_b_value(csa))
            g = csareader.get_g_vector(csa)
            vector = None if g is None else _numbers([float(x) for x in g])
        except Exception:  # a truncated/garbled CSA header: keep what was read
            pass
        if b is not None:
            return _siemens_diffusion(b, vector, "Siemens CSA")
    b = _number(_private(ds, _SIEMENS_B, by_tag))
    vector = _numbers(_private(ds, _SIEMENS_G, by_tag), "d")
    return _siemens_diffusion(b, vector, "Siemens (0019,100C)/(0019,100E)")


def _siemens_diffusion(
    b: float | None, vector: tuple[float, ...] | None, source: str
) -> Diffusion | None:
    if b is None:
        return None
    b = max(b, 0.0)  # readCSAImageHeader(): a negative CSA b-value is corrupt, taken as 0
    if vector is not None and len(vector) == 3 and all(v < -1.0 for v in vector):
        b = 0.0  # Trio Syngo2004A marks b0 with impossible vectors (readDICOMx)
    return _diffusion(b, vector, "patient", source)


def _ge_is_diffusion_sequence(ds: Dataset, by_tag: bool) -> bool:
    """dcm2niix readDICOMx(): GE diffusion is the spin-echo EPI PSD (EPI2 / '...epi2...')."""
    internal = (_text(_private(ds, _GE_INTERNAL_PSD, by_tag)) or "").upper()
    name = (_text(_private(ds, _GE_PSD, by_tag)) or "").lower()
    return internal == "EPI2" or "epi2" in name


def _ge(ds: Dataset, frame_item: Dataset | None, vendor: str | None) -> Diffusion | None:
    """GE: b is the first value of (0043,1039) mod 1e9 (set_bValGE(), dcm2niix issue 602).

    The gradient comes from (0019,10BB/10BC/10BD). GE writes it on the logical axes (frequency,
    phase, slice); it is returned on the image axes, mapped as geCorrectBvecs() does (see
    _logical_to_image). It is not rotated to the patient frame here. Creators GEMS_PARM_01 and
    GEMS_ACQU_01 are matched; by tag only when they were stripped. A b of 0 in a non-diffusion
    PSD (GE writes it for fMRI too) is not a diffusion fact, so it gives None.
    """
    by_tag = vendor == "GE"
    first = _number(_private(ds, _GE_B, by_tag))
    if first is None or first < 0:
        return None
    b = float(int(first) % 1_000_000_000)
    if b == 0 and not _ge_is_diffusion_sequence(ds, by_tag):
        return None
    freq, phase, slice_ = (_number(_private(ds, spec, by_tag)) for spec in _GE_GRADIENT)
    vector = _logical_to_image(freq, phase, slice_, _pe_direction(ds))
    if vector is not None and b > 0:
        norm = math.sqrt(sum(v * v for v in vector))
        if 0.03 < norm < 0.97:
            # geCorrectBvecs(): GE scales the vector to encode a lower b; b_eff = b |g|^2,
            # rounded to 5 s/mm^2 (at least 5).
            scaled = b * norm * norm
            b = 5.0 if 0 < scaled < 5 else float(int((scaled + 2.5) / 5) * 5)
    return _diffusion(b, vector, "image", "GE (0043,1039)")


def _philips_items(ds: Dataset, frame_item: Dataset | None) -> Iterator[Dataset | None]:
    """Where Philips keeps per-frame private tags: the frame's (2005,140F) item, the frame, ds."""
    if frame_item is not None:
        per_frame = _private(frame_item, _PHILIPS_PER_FRAME, True)
        try:
            yield per_frame[0] if per_frame is not None else None
        except Exception:
            yield None
        yield frame_item
    yield ds


def _philips(ds: Dataset, frame_item: Dataset | None, vendor: str | None) -> Diffusion | None:
    """Philips (2001,1003) b and (2005,10B0/10B1/10B2) gradient, in the patient frame.

    Philips names the axes RL, AP and FH. dcm2niix readDICOMx() stores them as x, y, z unchanged
    and siemensPhilipsCorrectBvecs() treats them as Siemens' LPS. So RL is +x (toward the left),
    AP is +y (posterior) and FH is +z (head). Creators "Philips Imaging DD 001" and
    "Philips MR Imaging DD 001" are matched. Philips writes b = 0 into non-diffusion images too
    (a field map, say). dcm2niix keeps it (readDICOMx(): B0Philips >= 0) and only writes no bval
    because the b-values do not vary. Unlike GE, dcm2niix has no rule that tells a Philips b0 of a
    DWI series from such a 0, so it is returned as b = 0.
    """
    by_tag = vendor == "Philips"
    for holder in _philips_items(ds, frame_item):
        b = _number(_private(holder, _PHILIPS_B, by_tag), "f")
        if b is None:
            continue
        parts = [_number(_private(holder, spec, by_tag), "f") for spec in _PHILIPS_GRADIENT]
        vector = None if any(p is None for p in parts) else tuple(p or 0.0 for p in parts)
        return _diffusion(b, vector, "patient", "Philips (2001,1003)")
    return None


_CANON_COMMENT = re.compile(
    r"b\s*=\s*([-+0-9.eE]+)\s*\(\s*([^,()]+),([^,()]+),([^,()]+)\)", re.IGNORECASE
)


def _canon(ds: Dataset, frame_item: Dataset | None, vendor: str | None) -> Diffusion | None:
    """Canon/Toshiba classic DICOM: ImageComments 'b=1000(p,f,s)' (dcm2niix issue 388).

    readDICOMx() swaps the first two numbers into GE's (frequency, phase, slice) order, and
    geCorrectBvecs() maps them like GE's, so the comment is (phase, frequency, slice). Image
    frame. When (0018,9089) is present it wins (it is the patient frame): read_diffusion() reads
    the public tags first.
    """
    if vendor not in ("Canon", "Toshiba"):
        return None
    match = _CANON_COMMENT.search(_text(_get(ds, 0x00204000)) or "")
    if match is None:
        return None
    b = _to_float(match[1])
    phase, freq, slice_ = (_to_float(match[i]) for i in (2, 3, 4))
    vector = _logical_to_image(freq, phase, slice_, _pe_direction(ds))
    return _diffusion(b, vector, "image", "Canon ImageComments")


def _uih(ds: Dataset, frame_item: Dataset | None, vendor: str | None) -> Diffusion | None:
    """UIH (0065,1009) actual b and (0065,1037) gradient, creator "Image Private Header".

    Read only when Manufacturer is UIH (the creator name is generic), as dcm2niix does.

    The gradient is in the PATIENT frame. On mr_uih_dti_mosaic (oblique by 1.75 degrees) the
    scanner's own table Grad_AP.csv, on the image axes, satisfies ``g = [r c n] @ csv`` to 5e-10.
    dcm2niix siemensPhilipsCorrectBvecs() does not rotate UIH vectors; it only negates y. So its
    bvecs treat ``g`` as image-frame, which matches the true bvecs only for non-oblique slices.
    """
    if vendor != "UIH":
        return None
    b = _number(_private(ds, _UIH_B, True), "d")
    vector = _numbers(_private(ds, _UIH_GRADIENT, True), "d")
    return _diffusion(b, vector, "patient", "UIH (0065,1009)/(0065,1037)")


_Reader = Callable[[Dataset, Dataset | None, str | None], Diffusion | None]
# Which Manufacturer each reader serves (None: Manufacturer absent, e.g. Siemens XA10 mosaics).
# dcm2niix gates every vendor tag on the manufacturer too.
_VENDOR_READERS: tuple[tuple[_Reader, tuple[str | None, ...]], ...] = (
    (_siemens, ("Siemens", None)),
    (_ge, ("GE", None)),
    (_philips, ("Philips", None)),
    (_canon, ("Canon", "Toshiba")),
    (_uih, ("UIH",)),
)


def _same_b(a: float, b: float) -> bool:
    return abs(a - b) <= 0.5 + 1e-3 * max(abs(a), abs(b))


def read_diffusion(ds: Dataset, frame_item: Dataset | None = None) -> Diffusion | None:
    """b-value and gradient of one frame, or None if the header says nothing about diffusion.

    ``frame_item``: for Enhanced images, this frame's item of the PerFrameFunctionalGroups.
    Public tags are read first: the frame's MRDiffusionSequence, then the shared groups, then
    the top level. Then the vendors' private tags (see the ``_siemens``, ``_ge``, ``_philips``,
    ``_canon`` and ``_uih`` readers). If the public tags give b > 0 but no vector, a vendor
    vector for the same b completes them.
    UIH is read first: dcm2niix ignores 0018,9089 once UIH's own vector was seen (issue 836).
    """
    try:
        vendor = _vendor(ds)
        if vendor == "UIH":
            found = _uih(ds, frame_item, vendor)
            if found is not None:
                return found
        partial: Diffusion | None = None
        for item in _public_items(ds, frame_item):
            found, wants_vector = _public(item)
            if found is not None:
                if not wants_vector:
                    return found
                partial = found
                break
        for reader, vendors in _VENDOR_READERS:
            if vendor not in vendors:
                continue
            found = reader(ds, frame_item, vendor)
            if found is None:
                continue
            if partial is None:
                return found
            if found.gradient is not None and _same_b(found.b_value, partial.b_value):
                source = f"{partial.source} + {found.source}"
                return Diffusion(partial.b_value, found.gradient, found.frame, source)
        return partial
    except Exception:  # never raise on a damaged header
        return None


# --- ASL, GE pepolar, Philips scaling ----------------------------------------------------


def asl_label(ds: Dataset) -> str | None:
    """The volume's ASL role, "label" or "control", where the header says it; else None.

    Philips writes it in (2005,1429) MRImageLabelType, creator "Philips MR Imaging DD 005".
    dcm2niix reads only its first letter, L or C. Enhanced files keep it per frame, in the frame's
    (2005,140F) item, so for them pass the per-frame item as ``ds``. The public ASLContext
    (0018,9257) LABEL/CONTROL, top level or in MRArterialSpinLabelingSequence, is read too.
    Siemens and GE alternate label and control without a per-volume tag, so they give None.
    """
    try:
        by_tag = _vendor(ds) in ("Philips", None)
        per_frame = _private(ds, _PHILIPS_PER_FRAME, by_tag)
        inner = per_frame[0] if per_frame is not None and len(per_frame) else None
        for holder in (ds, inner):
            text = _text(_private(holder, _PHILIPS_LABEL, by_tag))
            if text:
                first = text[0].upper()
                if first in ("L", "C"):
                    return "label" if first == "L" else "control"
        for holder in (ds, _item(ds, 0x00189251)):
            text = (_text(_get(holder, 0x00189257)) or "").upper()
            if text in ("LABEL", "CONTROL"):
                return text.lower()
    except Exception:
        pass
    return None


def ge_pepolar_mode(ds: Dataset) -> int | None:
    """GE ``epi_pepolar`` mode: 0 fwd, 1 rev, 2 rev-fwd, 3 fwd-rev; None for other sequences.

    The mode comes from the private PulseSequenceName (0019,109C) containing "epi_pepolar" and
    UserData12 (0019,10B3), as dcm2niix readDICOMx() reads them (dcm2niix issue 532,
    heudiconv 479). An unreadable or out-of-range mode gives None. dcm2niix then keeps mode 0,
    which also flips nothing.
    """
    try:
        by_tag = _vendor(ds) == "GE"
        name = (_text(_private(ds, _GE_PSD, by_tag)) or "").lower()
        if "epi_pepolar" not in name:
            return None
        mode = _number(_private(ds, _GE_USER_DATA_12, by_tag))
        if mode is None:
            return None
        value = round(mode)
        return value if value in (0, 1, 2, 3) else None
    except Exception:
        return None


def ge_pepolar_reversed(mode: int, volume_index: int) -> bool:
    """Whether volume ``volume_index`` (0-based, temporal order) was acquired with reversed polarity.

    GE stores the reversed volumes with their rows in reverse order; nothing in the public
    header says so. dcm2niix readDICOMx() uses the 1-based TemporalPositionIdentifier (0020,0100)
    ``v``: mode 1 reverses every volume, mode 2 (rev-fwd) reverses odd ``v``, mode 3 (fwd-rev)
    reverses even ``v``. nii_dicom_batch.cpp then flips their rows back and writes them as
    series number + 1000. With 0-based ``i = v - 1`` the rule is:

    * mode 0: none;
    * mode 1: all;
    * mode 2: even ``i`` (0, 2, ...);
    * mode 3: odd ``i`` (1, 3, ...).

    Verified on mr_ge_epi_pepolar (mode 2; 4 temporal positions of 60 slices). Positions 1 and 3
    (i = 0, 2), with each slice's rows reversed (``a[::-1, :]``), equal dcm2niix's
    Ref/1006_*.nii volumes 0 and 1 pixel for pixel. Positions 2 and 4 (i = 1, 3) equal
    Ref/6_*.nii unchanged. Modes 1 and 3 follow the dcm2niix source and are not verified on data.
    """
    if not isinstance(volume_index, int) or volume_index < 0:
        return False
    if mode == 1:
        return True
    if mode == 2:
        return volume_index % 2 == 0
    if mode == 3:
        return volume_index % 2 == 1
    return False


GE_IMAGE_KINDS = {0: "magnitude", 1: "phase", 2: "real", 3: "imaginary"}
"""GE private image type (0043,102F) values, as dcm2niix readDICOMx() (case kImageTypeGE) reads them."""


def ge_image_kind(ds: Dataset) -> str | None:
    """What a GE image holds: "magnitude", "phase", "real" or "imaginary"; None if not said.

    GE can write the magnitude, phase, real and imaginary images of one acquisition into one
    series with the same public ImageType and the same slice positions; only the private
    (0043,102F) SS tells them apart. Without it they would look like repeated volumes and be
    cut into one 4-D volume by instance order, mixing magnitude and phase. dcm2niix reads it
    for GE files only (readDICOMx(), case kImageTypeGE: isHasMagnitude/Phase/Real/Imaginary),
    and so does this, by tag number only when Manufacturer says GE.
    """
    try:
        if _vendor(ds) != "GE":
            return None
        value = _number(_private(ds, _GE_IMAGE_TYPE, True), "h")
        return None if value is None else GE_IMAGE_KINDS.get(round(value))
    except Exception:
        return None


def philips_scale_slope(ds: Dataset, frame_item: Dataset | None = None) -> float | None:
    """Philips private floating-point scale SS, (2005,100E) MRScaleSlope; None if absent.

    Philips stores integers SV with RescaleSlope RS and RescaleIntercept RI. The displayed value
    is ``DV = SV * RS + RI``; the scanner's floating-point value is
    ``FP = (SV * RS + RI) / (RS * SS) = DV / (RS * SS)`` (dcm2niix PhilipsPrecise(), exported as
    PhilipsScaleSlope). Enhanced files have it per frame, inside the frame's private per-frame
    sequence (2005,140F) item. dcm2niix takes whichever (2005,100E) it read last within the frame
    item. Here the frame item is searched, then its PixelValueTransformationSequence, then the
    shared groups, then the top level. dcm2niix accepts only a 4-byte FL from a Philips header;
    this reads any finite, non-zero number of "Philips MR Imaging DD 001" (2005,xx0E), by tag
    only for Philips.
    """
    try:
        vendor = _vendor(ds)
        if vendor not in ("Philips", None):
            return None
        by_tag = vendor == "Philips"
        holders: list[Dataset | None] = list(_philips_items(ds, frame_item))[:-1]
        holders.append(_item(frame_item, 0x00289145))
        shared = _item(ds, _SHARED_GROUPS)
        holders += [shared, _item(shared, 0x00289145), ds]
        for holder in holders:
            value = _number(_private(holder, _PHILIPS_SCALE, by_tag), "f")
            if value is not None and value != 0:
                return value
    except Exception:
        pass
    return None


# --- BIDS sidecar ------------------------------------------------------------------------


def _ms_to_s(value: Any) -> float | None:
    ms = _positive(value)
    return None if ms is None else ms / 1000.0


def _acquisition_matrix_pe(ds: Dataset) -> int | None:
    """Phase-encoding lines from AcquisitionMatrix (0018,1310), dcm2niix readDICOMx().

    The four values are [freq rows, freq cols, phase rows, phase cols]; phase rows win.
    """
    matrix = _numbers(_find(ds, 0x00181310))
    if matrix is None or len(matrix) != 4:
        return None
    lines = matrix[2] if matrix[2] > 0 else matrix[3]
    return int(lines) if lines > 0 else None


def _tile(ds: Dataset) -> tuple[int, int] | None:
    """Rows and columns of one slice; for a mosaic (Siemens MOSAIC, UIH VFRAME), of one tile."""
    rows, cols = _positive(_get(ds, 0x00280010)), _positive(_get(ds, 0x00280011))
    if rows is None or cols is None:
        return None
    image_type = (_text(_get(ds, 0x00080008)) or "").upper().split("\\")
    if "MOSAIC" in image_type:
        n: float | None = None
        raw = _private(ds, _CSA_IMAGE, _vendor(ds) == "Siemens")
        if isinstance(raw, bytes):
            try:
                csareader = _csa()
                n = _to_float(csareader.get_scalar(csareader.read(raw), "NumberOfImagesInMosaic"))
            except Exception:
                n = None
        if n is None:
            n = _positive(_private(ds, _SIEMENS_MOSAIC_N, _vendor(ds) == "Siemens"))
        if n is not None and n > 0:
            across = math.ceil(math.sqrt(n))
            return int(rows) // across, int(cols) // across
    if "VFRAME" in image_type and _vendor(ds) == "UIH":
        n = _positive(_private(ds, _UIH_GRID_N, True))
        if n is not None:
            across = math.ceil(math.sqrt(n))  # UIH: cols = ceil(sqrt(n)), rows = ceil(n / cols)
            return int(rows) // math.ceil(n / across), int(cols) // across
    return int(rows), int(cols)


def _recon_matrix_pe(ds: Dataset) -> int | None:
    """nii_SaveBIDSX() ReconMatrixPE: image rows for COL phase encoding, columns for ROW."""
    tile = _tile(ds)
    if tile is None:
        return None
    rows, cols = tile
    if rows == cols:
        return rows
    pe = _pe_direction(ds)
    return rows if pe == "COL" else cols if pe == "ROW" else None


def _parallel_factor(ds: Dataset) -> float | None:
    """In-plane acceleration: GE (0043,1083), UIH (0065,100D), Siemens PAT text, (0018,9069)."""
    vendor = _vendor(ds)
    if vendor == "GE":
        asset = _positive(_private(ds, _GE_ASSET, True))  # reciprocal of R (dcm2niix issue 427)
        if asset is not None:
            return 1.0 / asset
    if vendor == "UIH":  # "F:2S" -> 2 (dcmStrDigitsDotOnlyKey(':'))
        match = re.search(r":\s*([0-9.]+)", _text(_private(ds, _UIH_PARALLEL, True)) or "")
        factor = _to_float(match[1]) if match else None
        if factor is not None and factor > 0:
            return factor
    if vendor == "Siemens":  # "p2s4" -> 2 (dcmStrDigitsOnlyKey('p'))
        for spec in (_SIEMENS_PAT, _SIEMENS_PAT_XA):
            match = re.search(r"p([0-9.]+)", _text(_find_private(ds, spec, True)) or "")
            factor = _to_float(match[1]) if match else None
            if factor is not None and factor > 0:
                return factor
    return _positive(_find(ds, 0x00189069))


def _partial_fourier(ds: Dataset) -> bool:
    options = (_sequence_text(ds, 0x00180022) or "").upper().split("\\")
    return "PFF" in options or (_text(_find(ds, 0x00189081)) or "").upper().startswith("Y")


def _readout(ds: Dataset) -> tuple[float | None, float | None]:
    """EffectiveEchoSpacing and TotalReadoutTime (s), as dcm2niix nii_SaveBIDSX().

    * GE: ESP = (0043,102C) in us, R the ASSET factor, rf = 4 with partial Fourier else 2.
      ``lines = ceil(AcqPE / R / rf) * rf``, ``EES = (lines - 1) * ESP / (AcqPE - 1)``,
      ``TRT = EES * (ReconPE - 1)``. This is dcm2niix v1.0.20260416 and later, black-box checked
      against v1.0.20260724 with ESP, ASSET, PFF and AcqPE varied. The published GE/README
      formula divides by ReconPE - 1 and differs when the image is interpolated (pepolar: 72
      acquired lines, 128 reconstructed).
    * Siemens: ``EES = 1 / (BandwidthPerPixelPhaseEncode * ReconPE)`` from (0019,1028), XA
      (0021,1153) or the CSA header; ``TRT = EES * (ReconPE - 1)``.
    * UIH without an echo spacing: ``TRT = AcquisitionDuration (0018,9073) / 1000`` (issue 225).
    """
    vendor = _vendor(ds)
    recon = _recon_matrix_pe(ds)
    if vendor == "GE":
        esp = _positive(_private(ds, _GE_ESP, True))
        acq = _acquisition_matrix_pe(ds)
        if esp is not None and acq is not None and acq > 1 and recon is not None and recon > 1:
            r = _parallel_factor(ds) or 1.0
            rf = 4.0 if _partial_fourier(ds) else 2.0
            lines = math.ceil(acq / r / rf) * rf
            ees = (lines - 1.0) * esp * 1e-6 / (acq - 1.0)
            return ees, ees * (recon - 1.0)
    if vendor == "Siemens" and recon is not None and recon > 1:
        bw = _positive(_find_private(ds, _SIEMENS_BWPPPE, True)) or _positive(
            _find_private(ds, _SIEMENS_BWPPPE_XA, True)
        )
        raw = _private(ds, _CSA_IMAGE, True)
        if bw is None and isinstance(raw, bytes):
            try:
                csareader = _csa()
                csa = csareader.read(raw)
                bw = _positive(csareader.get_scalar(csa, "BandwidthPerPixelPhaseEncode"))
            except Exception:
                bw = None
        if bw is not None:
            ees = 1.0 / (bw * recon)
            return ees, ees * (recon - 1.0)
    if vendor == "UIH":
        duration = _positive(_get(ds, 0x00189073))
        if duration is None:
            vframe = _private(ds, _UIH_VFRAME, True)
            first = vframe[0] if vframe is not None and len(vframe) else None
            duration = _positive(_get(first, 0x00189073))
        if duration is not None:
            return None, duration / 1000.0
    return None, None


def _repetition_time(ds: Dataset) -> float | None:
    """TR in s. For GE, the epiRT group delay (0043,107C) is added (dcm2niix readDICOMx())."""
    tr = _positive(_find(ds, 0x00180080))
    if tr is None:
        return None
    if _vendor(ds) == "GE":
        delay = _positive(_private(ds, _GE_GROUP_DELAY, True))
        if delay is not None:
            tr += delay * 1000.0
    return tr / 1000.0


def _imaging_frequency(ds: Dataset) -> float | None:
    """MHz. UIH writes Hz (128176060); dcm2niix drops such values, here they are converted."""
    mhz = _positive(_find(ds, 0x00180084)) or _positive(_find(ds, 0x00189098))
    if mhz is None:
        return None
    return mhz / 1e6 if mhz > 1e5 else mhz


def _pulse_sequence_name(ds: Dataset) -> str | None:
    """GE private (0019,109C), as in dcm2niix's Refs; else the public PulseSequenceName."""
    if _vendor(ds) == "GE":
        name = _text(_private(ds, _GE_PSD, True))
        if name is not None:
            return name
    return _text(_find(ds, 0x00189005))


def _int(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None and number == int(number) else None


def _echo_train_length(ds: Dataset) -> int | None:
    """dcm2niix writes EchoTrainLength only when > 1 (GE/Siemens EPI say 1)."""
    etl = _int(_find(ds, 0x00180091)) or _int(_find(ds, 0x00189241))
    return etl if etl is not None and etl > 1 else None


def _sequence_text(ds: Dataset, tag: int) -> str | None:
    """ScanningSequence/SequenceVariant/ScanOptions; Siemens XA keeps them in (0021,105A-C)."""
    text = _text(_find(ds, tag))
    if text is None and _vendor(ds) == "Siemens":
        text = _text(_find_private(ds, _SIEMENS_XA_TEXT[tag], True))
    return text


def _image_type(ds: Dataset) -> list[str] | None:
    text = _text(_get(ds, 0x00080008))
    return None if text is None else [part.strip() for part in text.split("\\")]


def _acquisition_type(ds: Dataset) -> str | None:
    text = (_text(_find(ds, 0x00180023)) or "").upper()
    return text if text in ("2D", "3D") else None


_SIDECAR: tuple[tuple[str, Callable[[Dataset], Any]], ...] = (
    ("Modality", lambda d: _text(_get(d, 0x00080060))),
    ("MagneticFieldStrength", lambda d: _positive(_find(d, 0x00180087))),
    ("ImagingFrequency", _imaging_frequency),
    ("Manufacturer", lambda d: _vendor(d) or _text(_get(d, 0x00080070))),
    ("ManufacturersModelName", lambda d: _text(_get(d, 0x00081090))),
    ("BodyPart", lambda d: _text(_find(d, 0x00180015))),
    ("PatientPosition", lambda d: _text(_get(d, 0x00185100))),
    ("SoftwareVersions", lambda d: _text(_get(d, 0x00181020))),
    ("MRAcquisitionType", _acquisition_type),
    ("SeriesDescription", lambda d: _text(_get(d, 0x0008103E))),
    ("ProtocolName", lambda d: _text(_get(d, 0x00181030))),
    ("ScanningSequence", lambda d: _sequence_text(d, 0x00180020)),
    ("SequenceVariant", lambda d: _sequence_text(d, 0x00180021)),
    ("ScanOptions", lambda d: _sequence_text(d, 0x00180022)),
    ("SequenceName", lambda d: _text(_find(d, 0x00180024))),
    ("PulseSequenceName", _pulse_sequence_name),
    ("ImageType", _image_type),
    ("SeriesNumber", lambda d: _int(_get(d, 0x00200011))),
    ("SliceThickness", lambda d: _positive(_find(d, 0x00180050))),
    ("SpacingBetweenSlices", lambda d: _positive(_find(d, 0x00180088))),
    ("NumberOfAverages", lambda d: _positive(_find(d, 0x00180083))),
    ("EchoTime", lambda d: _ms_to_s(_find(d, 0x00180081)) or _ms_to_s(_find(d, 0x00189082))),
    ("RepetitionTime", _repetition_time),
    ("InversionTime", lambda d: _ms_to_s(_find(d, 0x00180082)) or _ms_to_s(_find(d, 0x00189079))),
    ("FlipAngle", lambda d: _positive(_find(d, 0x00181314))),
    ("EchoTrainLength", _echo_train_length),
    ("PercentPhaseFOV", lambda d: _positive(_find(d, 0x00180094))),
    ("PercentSampling", lambda d: _positive(_find(d, 0x00180093))),
    ("AcquisitionMatrixPE", _acquisition_matrix_pe),
    ("ReconMatrixPE", _recon_matrix_pe),
    ("ParallelReductionFactorInPlane", _parallel_factor),
    ("EffectiveEchoSpacing", lambda d: _readout(d)[0]),
    ("TotalReadoutTime", lambda d: _readout(d)[1]),
    ("PixelBandwidth", lambda d: _positive(_find(d, 0x00180095))),
    ("InPlanePhaseEncodingDirectionDICOM", _pe_direction),
    ("PhaseEncodingAxis", lambda d: {"COL": "j", "ROW": "i"}.get(_pe_direction(d) or "")),
)


def sidecar(ds: Dataset) -> dict[str, Any]:
    """The acquisition block of dcm2niix's BIDS sidecar (nii_SaveBIDSX()), never identifying.

    Keys are dcm2niix's, in its order; times in seconds, numbers as int/float. Absent or
    unreadable values are omitted, as are zero/negative ones (dcm2niix json_Float()). Enhanced
    images are read through their functional groups.
    Institution, address, station, device serial number, dates and times of day, names, IDs and
    UIDs are never included: they identify the patient or the device.
    Deliberate differences from dcm2niix: ImageType is (0008,0008) as written (dcm2niix appends
    MAGNITUDE/PHASE/... inferred from other tags); SeriesNumber is the DICOM one (dcm2niix adds
    1000 for GE pepolar reversed volumes); ImagingFrequency is converted to MHz where UIH wrote
    Hz; NumberOfAverages and ParallelReductionFactorInPlane of 1 are kept.
    """
    out: dict[str, Any] = {}
    for key, read in _SIDECAR:
        try:
            value = read(ds)
        except Exception:  # one damaged tag must not hide the others
            value = None
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue
        out[key] = value
    return out
