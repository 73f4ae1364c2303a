"""A stored volume out to NIfTI + BIDS sidecar JSON (+ FSL ``.bval``/``.bvec`` for diffusion).

``export_nifti(volume, "out.nii.gz")`` writes ``out.nii.gz``, ``out.json`` and, when the volume
carries b-values with any b > 0, ``out.bval`` and ``out.bvec``: the set of files dcm2niix writes
and FSL, MRtrix3, DIPY and BIDS apps read.

Conventions
-----------
Image
    The array is written as (x, y, z[, t]) with x the DICOM column index, y the row index and z
    the slice index (the store's axes, never flipped or reordered); a colour volume's channels
    become RGB24 voxels (NIfTI datatype 128), as dcm2niix writes colour DICOM.  The sform is
    :func:`~voxelhub.store.volume.nifti_affine`, exact (sheared under gantry tilt, as dcm2niix does; the
    qform, which cannot hold shear, is then left unset).  Units are mm and s; ``pixdim[4]`` is
    the repetition time when it is known.
Sidecar
    ``attrs["acquisition"]`` (BIDS keys) plus ``ConversionSoftware``/``ConversionSoftwareVersion``.
    Axis codes (``PhaseEncodingDirection`` and friends) are already in the store's index axes,
    which are the exported NIfTI's axes.  A per-volume ``phase_encoding_direction`` (or
    ``echo_time``) that is the same for every volume becomes the file's value; one that differs
    between volumes is left out (BIDS has one value per file) and ``VoxelHubNote`` says why.
bval
    One line, the b-values in s/mm² formatted like dcm2niix (``%g``: 6 significant digits).
bvec
    Three lines (x, y, z), FSL's convention: each gradient expressed in the image's voxel axes
    (``g_voxel = D⁻¹ g_LPS``, ``D`` the affine's columns divided by the voxel sizes, then
    normalised), with the x component negated when the determinant of the NIfTI affine's 3×3
    part is positive, because FSL reads bvecs as if the image were stored radiologically
    (negative determinant).  b = 0 and unknown directions are written as ``0 0 0``.  The store
    keeps each volume's LPS direction as the ``t`` coordinates ``gradient_L``, ``gradient_P``,
    ``gradient_S`` (``gradient_x/y/z``, the same in index axes, are used when those are absent).
    This is what dcm2niix does; its files differ from ours only by its row flip (it reverses y,
    which negates the y component *and* turns the determinant negative, so its x component has
    the opposite sign to ours): both describe the same direction in patient space.

Every file is written under a temporary name in the destination folder, flushed to disk and
renamed over the final name (``os.replace``), sidecars first and the image last, so a crash
never leaves a partly written file under a final name and an image is never newer than the
sidecars it was exported with.

Files are private: each is created (exclusively, never through a link) with mode 0600, or 0640
in a setgid folder (a project folder shared with its group), and the umask may only take more
away; other users can never read an export.  With no path, ``voxelhub export`` writes into
:func:`voxelhub.config.export_dir` (the user's own folder), never the shared temporary folder.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from voxelhub.errors import GeometryError
from voxelhub.store.volume import nifti_affine, nifti_voxels

log = logging.getLogger(__name__)

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_NIFTI_BLOCKING_FLAGS = {"non_uniform_spacing", "missing_slices"}
_AXIS_CODE_KEYS = ("PhaseEncodingDirection", "PhaseEncodingAxis", "SliceEncodingDirection")
_STORE_TO_NIFTI_AXIS = {"i": "i", "j": "j", "k": "k"}
"""Store index axis letter → exported NIfTI axis letter (identity: the export never flips)."""


@dataclass(frozen=True)
class Exported:
    """The files one export wrote (``bval``/``bvec`` are None when the volume is not diffusion)."""

    image: Path
    sidecar: Path
    bval: Path | None
    bvec: Path | None


def export_nifti(volume: xr.DataArray, path: str | os.PathLike[str]) -> Exported:
    """Write ``volume`` as NIfTI-1 (``.nii`` or ``.nii.gz``) with its BIDS sidecar and gradients.

    Parameters
    ----------
    volume
        A DataArray with dims ``("z", "y", "x")`` or ``("t", "z", "y", "x")`` and
        ``attrs["affine_lps"]`` (as :func:`voxelhub.open_series` returns it).
    path
        The image's path; the sidecar, ``.bval`` and ``.bvec`` go next to it with the same stem.

    Raises
    ------
    GeometryError
        The volume has no ``affine_lps``, a degenerate affine, or a grid NIfTI cannot hold
        (non-uniform slice spacing, missing slices).
    ValueError
        The path does not end in ``.nii``/``.nii.gz``, the dims are not the store's, or the
        per-volume metadata is malformed.
    """
    image_path, stem = _split_nifti_path(path)
    name = volume.name or image_path.name
    four_d = _check_dims(volume, name)
    affine = _checked_affine(volume, name)
    sidecar = _sidecar(volume)
    bval_text, bvec_text, note = _gradient_files(volume, affine, four_d)
    if note:
        log.warning("%s: %s", name, note)
        _add_note(sidecar, note)
    sidecar_text = _json_text(sidecar, name)

    data = _nifti_data(nifti_voxels(volume))
    image = _nifti_image(data, affine, volume, sidecar, four_d)

    sidecar_path = stem.with_name(stem.name + ".json")
    bval_path = stem.with_name(stem.name + ".bval") if bval_text is not None else None
    bvec_path = stem.with_name(stem.name + ".bvec") if bvec_text is not None else None
    writes: list[tuple[Path, Callable[[Path], None], str]] = [
        (sidecar_path, _text_writer(sidecar_text), ".tmp")
    ]
    if bval_path is not None and bval_text is not None:
        writes.append((bval_path, _text_writer(bval_text), ".tmp"))
    if bvec_path is not None and bvec_text is not None:
        writes.append((bvec_path, _text_writer(bvec_text), ".tmp"))
    suffix = image_path.name[len(stem.name) :]
    writes.append((image_path, _image_writer(image), ".tmp" + suffix))  # the image last
    _write_all_atomically(writes)

    if bval_path is None:  # an older export's gradients under this name would not match
        for stale in (stem.with_name(stem.name + ".bval"), stem.with_name(stem.name + ".bvec")):
            stale.unlink(missing_ok=True)
    elif bvec_path is None:
        stem.with_name(stem.name + ".bvec").unlink(missing_ok=True)
    return Exported(image=image_path, sidecar=sidecar_path, bval=bval_path, bvec=bvec_path)


# --------------------------------------------------------------------------------------------
# checks


def _split_nifti_path(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(image path, stem path without the NIfTI suffix)."""
    image_path = Path(os.fspath(path))
    for suffix in _NIFTI_SUFFIXES:
        if image_path.name.endswith(suffix) and len(image_path.name) > len(suffix):
            return image_path, image_path.with_name(image_path.name[: -len(suffix)])
    raise ValueError(f"{image_path}: a NIfTI export path must end in .nii or .nii.gz")


def _check_dims(volume: xr.DataArray, name: object) -> bool:
    """True for a 4-D (t, z, y, x) volume, False for 3-D (z, y, x); anything else is refused.

    A colour volume's channel axis ``c`` is not a NIfTI dimension: it becomes RGB24 voxels.
    """
    dims = set(volume.dims) - {"c"}
    if dims == {"z", "y", "x"}:
        return False
    if dims == {"t", "z", "y", "x"}:
        return True
    raise ValueError(
        f"{name}: expected dims ('z', 'y', 'x') or ('t', 'z', 'y', 'x'), got {volume.dims}"
    )


def _checked_affine(volume: xr.DataArray, name: object) -> np.ndarray:
    """The NIfTI (RAS) affine, after refusing what NIfTI cannot hold."""
    if "affine_lps" not in volume.attrs:
        raise GeometryError(
            f"{name}: attrs['affine_lps'] is missing, so the voxels' position in the patient is "
            "unknown and a NIfTI would be wrong; open the volume with voxelhub.open_series "
            "(or set the 4x4 index-to-LPS affine) before exporting"
        )
    flags = set(volume.attrs.get("flags", []))
    blocked = flags & _NIFTI_BLOCKING_FLAGS
    if blocked:
        raise GeometryError(
            f"{name}: NIfTI needs uniform slice spacing and this volume has "
            f"{', '.join(sorted(blocked))}; resample it onto a uniform grid first"
        )
    affine_lps = np.asarray(volume.attrs["affine_lps"], dtype=float)
    if affine_lps.shape != (4, 4) or not np.all(np.isfinite(affine_lps)):
        raise GeometryError(f"{name}: attrs['affine_lps'] is not a finite 4x4 matrix")
    if abs(np.linalg.det(affine_lps[:3, :3])) < 1e-12:
        raise GeometryError(f"{name}: attrs['affine_lps'] is singular (a zero voxel size?)")
    return nifti_affine(volume)


def _is_orthogonal(affine: np.ndarray) -> bool:
    columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return bool(np.allclose(columns.T @ columns, np.eye(3), atol=1e-5))


# --------------------------------------------------------------------------------------------
# the image


def _nifti_data(data: np.ndarray) -> np.ndarray:
    """Data in a dtype NIfTI-1 holds (bool → uint8, float16 → float32), else unchanged."""
    if data.dtype == np.bool_:
        return data.astype(np.uint8)
    if data.dtype == np.float16:
        return data.astype(np.float32)
    return data


def _nifti_image(
    data: np.ndarray,
    affine: np.ndarray,
    volume: xr.DataArray,
    sidecar: Mapping[str, Any],
    four_d: bool,
) -> Any:
    import nibabel as nib

    image = nib.Nifti1Image(data, affine, dtype=data.dtype)
    header = image.header
    header.set_xyzt_units("mm", "sec")
    image.set_sform(affine, code=1)
    if "gantry_tilt" in set(volume.attrs.get("flags", [])) or not _is_orthogonal(affine):
        image.set_qform(None, code=0)  # a qform cannot hold shear; the sform is exact
    else:
        image.set_qform(affine, code=1)
    if four_d:
        tr = _repetition_time(volume, sidecar)
        zooms = header.get_zooms()
        header.set_zooms((*zooms[:3], tr if tr is not None else 0.0))
    header["descrip"] = f"voxelhub {_version()}".encode()[:79]
    return image


def _repetition_time(volume: xr.DataArray, sidecar: Mapping[str, Any]) -> float | None:
    for value in (volume.attrs.get("repetition_time"), sidecar.get("RepetitionTime")):
        tr = _finite_float(value)
        if tr is not None and tr > 0:
            return tr
    return None


# --------------------------------------------------------------------------------------------
# the sidecar


def _sidecar(volume: xr.DataArray) -> dict[str, Any]:
    acquisition = volume.attrs.get("acquisition") or {}
    sidecar: dict[str, Any] = dict(acquisition)
    for key in _AXIS_CODE_KEYS:
        if sidecar.get(key) is None:
            continue
        code = _nifti_axis_code(str(sidecar[key]))
        if code is None:
            _add_note(sidecar, f"{key}={sidecar.pop(key)!r} was left out: not a BIDS axis code.")
        else:
            sidecar[key] = code
    if "RepetitionTime" not in sidecar:
        tr = _finite_float(volume.attrs.get("repetition_time"))
        if tr is not None and tr > 0:
            sidecar["RepetitionTime"] = tr
    # per volume along t, or the one selected with isel(t=k) (a scalar coordinate)
    _per_volume_phase_encoding(volume, sidecar)
    _per_volume_echo_time(volume, sidecar)
    sidecar["ConversionSoftware"] = "voxelhub"
    sidecar["ConversionSoftwareVersion"] = _version()
    return sidecar


def _nifti_axis_code(code: str) -> str | None:
    """A store axis code ("j", "j-", "i", "k-") as the exported NIfTI's; None if not one."""
    letter, sign = code.strip()[:1], code.strip()[1:]
    if letter not in _STORE_TO_NIFTI_AXIS or sign not in ("", "-"):
        return None
    return _STORE_TO_NIFTI_AXIS[letter] + sign


def _per_volume_phase_encoding(volume: xr.DataArray, sidecar: dict[str, Any]) -> None:
    if "phase_encoding_direction" not in volume.coords:
        return
    values = np.atleast_1d(np.asarray(volume.coords["phase_encoding_direction"].values))
    codes = [_nifti_axis_code(v) if (v := _text_or_none(x)) else None for x in values]
    known = {c for c in codes if c is not None}
    if len(known) == 1 and None not in codes:
        sidecar["PhaseEncodingDirection"] = known.pop()
        return
    sidecar.pop("PhaseEncodingDirection", None)
    if not known:
        return
    listing = ", ".join(f"{i}:{c or '?'}" for i, c in enumerate(codes))
    _add_note(
        sidecar,
        "PhaseEncodingDirection is left out because it is not the same for every volume "
        f"(volume:direction in NIfTI axes = {listing}); BIDS allows one value per file, so "
        "split the volumes by direction (e.g. fslroi) before distortion correction (topup).",
    )


def _per_volume_echo_time(volume: xr.DataArray, sidecar: dict[str, Any]) -> None:
    if "echo_time" not in volume.coords:
        return
    values = [
        _finite_float(v) for v in np.atleast_1d(np.asarray(volume.coords["echo_time"].values))
    ]
    known = {v for v in values if v is not None}
    if len(known) == 1 and None not in values:
        sidecar.setdefault("EchoTime", known.pop())
        return
    if len(known) > 1:
        sidecar.pop("EchoTime", None)
        listing = ", ".join(f"{i}:{'?' if v is None else f'{v:g}'}" for i, v in enumerate(values))
        _add_note(
            sidecar,
            f"EchoTime is left out because it differs between volumes (volume:seconds = {listing}); "
            "BIDS expects one echo per file, so split the echoes before analysis.",
        )


def _add_note(sidecar: dict[str, Any], note: str) -> None:
    previous = sidecar.get("VoxelHubNote")
    sidecar["VoxelHubNote"] = f"{previous} {note}" if previous else note


def _json_text(sidecar: Mapping[str, Any], name: object) -> str:
    try:
        return json.dumps(_jsonable(sidecar), indent=2, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: attrs['acquisition'] cannot be written as JSON: {exc}") from exc


def _jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays to Python, non-finite numbers to null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# --------------------------------------------------------------------------------------------
# bval / bvec


def _gradient_files(
    volume: xr.DataArray, affine: np.ndarray, four_d: bool
) -> tuple[str | None, str | None, str | None]:
    """(bval text, bvec text, note for the sidecar); texts are None when not written."""
    if not four_d or "b_value" not in volume.coords:
        return None, None, None
    n = volume.sizes["t"]
    b = np.asarray(volume.coords["b_value"].values, dtype=float).reshape(-1)
    if b.shape != (n,):
        raise ValueError(f"b_value has {b.size} values for {n} volumes")
    if not np.any(np.isfinite(b) & (b > 0)):
        return None, None, None
    unusable = ~np.isfinite(b) | (b < 0)
    if unusable.any():
        bad = ", ".join(str(i) for i in np.flatnonzero(unusable))
        return (
            None,
            None,
            f"No .bval/.bvec written: the b-value of volume(s) {bad} is unknown or negative, and "
            "FSL's format has no way to say so.",
        )
    bval = " ".join(_g(v) for v in b) + "\n"
    table = _gradient_table(volume, n)
    if table is None:
        return (
            bval,
            None,
            "No .bvec written: the gradient directions are not known for this series.",
        )
    g, frame = table
    bvec = fsl_bvecs(g, b, affine) if frame == "lps" else _fsl_from_voxel_axes(g, b, affine)
    text = "".join(" ".join(_g(v) for v in row) + "\n" for row in bvec.T)
    return bval, text, None


_GRADIENT_COORDS = {
    "lps": ("gradient_L", "gradient_P", "gradient_S"),
    "voxel": ("gradient_x", "gradient_y", "gradient_z"),
}
"""Per-volume direction components the store keeps along ``t`` (a DataArray's coordinates can
only use its own dims, so each vector is three coordinates): DICOM LPS patient axes, and the
volume's own x, y, z index axes."""


def _gradient_table(volume: xr.DataArray, n: int) -> tuple[np.ndarray, str] | None:
    """The (n, 3) directions and their frame ("lps" preferred, else "voxel"), or None."""
    for frame, names in _GRADIENT_COORDS.items():
        if all(c in volume.coords for c in names):
            g = np.stack(
                [np.asarray(volume.coords[c].values, dtype=float).reshape(-1) for c in names],
                axis=1,
            )
            if g.shape != (n, 3):
                raise ValueError(f"{', '.join(names)} have {g.shape[0]} rows for {n} volumes")
            return g, frame
    return None


def _fsl_from_voxel_axes(g: np.ndarray, b: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """FSL bvecs from directions already in the image's voxel axes: normalise, apply the x rule."""
    usable = _usable(g, b)
    out = np.zeros_like(g)
    voxel = g[usable] / np.linalg.norm(g[usable], axis=1, keepdims=True)
    if np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]) > 0:
        voxel[:, 0] = -voxel[:, 0]
    out[usable] = voxel
    return out


def _usable(g: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Volumes with b > 0 and a known, non-zero direction."""
    known = np.all(np.isfinite(g), axis=1) & (np.linalg.norm(np.nan_to_num(g), axis=1) > 1e-6)
    return known & np.isfinite(b) & (b > 0)


def fsl_bvecs(gradient_lps: np.ndarray, b_values: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Gradient directions (N, 3) in DICOM LPS → FSL bvecs (N, 3) for a NIfTI with ``affine``.

    ``affine`` is the NIfTI (RAS) voxel-to-world matrix of the exported image.  Each direction is
    expressed in the image's voxel axes and normalised; its x component is negated when the
    affine's 3×3 determinant is positive (FSL's convention).  Volumes with b = 0 or without a
    usable direction (NaN or zero vector) get ``0 0 0``.
    """
    lps_columns = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(affine, dtype=float)[:3, :3]
    direction = lps_columns / np.linalg.norm(lps_columns, axis=0)
    g = np.asarray(gradient_lps, dtype=float)
    usable = _usable(g, np.asarray(b_values, dtype=float))
    out = np.zeros_like(g)
    if usable.any():
        voxel = np.linalg.solve(direction, g[usable].T).T
        voxel /= np.linalg.norm(voxel, axis=1, keepdims=True)
        if np.linalg.det(np.asarray(affine, dtype=float)[:3, :3]) > 0:
            voxel[:, 0] = -voxel[:, 0]
        out[usable] = voxel
    return out


def _g(value: float) -> str:
    """``%g`` as dcm2niix prints (6 significant digits, no "-0")."""
    return f"{float(value) + 0.0:g}"


# --------------------------------------------------------------------------------------------
# atomic writing


PRIVATE_MODE = 0o600
"""Mode an exported file is created with (before the umask)."""
GROUP_SHARED_MODE = 0o640
"""Mode in a setgid folder: the folder's group (a project's members) may read, others never."""


def file_mode(folder: str | os.PathLike[str]) -> int:
    """The mode exports are created with in ``folder``: 0640 if it is setgid, else 0600."""
    try:
        setgid = bool(os.stat(folder).st_mode & stat.S_ISGID)
    except OSError:
        setgid = False
    return GROUP_SHARED_MODE if setgid else PRIVATE_MODE


def _create_private(path: Path) -> int:
    """Create ``path`` exclusively (never following a link) with a private mode; its fd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    return os.open(path, flags, file_mode(path.parent))


def _text_writer(text: str) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with os.fdopen(_create_private(path), "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return write


def _image_writer(image: Any) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        import nibabel as nib

        os.close(_create_private(path))  # nibabel then writes into it, keeping its mode
        nib.save(image, path)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    return write


def _write_all_atomically(writes: list[tuple[Path, Callable[[Path], None], str]]) -> None:
    """Write every file under a temporary name next to it, then rename each over its final name.

    Nothing appears under a final name until every temporary file is complete; on any failure
    the temporary files are removed.
    """
    token = uuid.uuid4().hex[:12]
    temporaries: list[tuple[Path, Path]] = []
    try:
        for final, write, suffix in writes:
            temporary = final.with_name(f".{final.name}.{token}{suffix}")
            temporaries.append((temporary, final))
            write(temporary)
        for temporary, final in temporaries:
            os.replace(temporary, final)
        _fsync_directory(writes[0][0].parent)
    except BaseException:
        for temporary, _ in temporaries:
            temporary.unlink(missing_ok=True)
        raise


def _fsync_directory(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# small helpers


def _finite_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _text_or_none(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _version() -> str:
    import voxelhub

    return str(voxelhub.__version__)
