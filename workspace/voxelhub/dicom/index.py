"""Header indexing: walk folders and zip files, read DICOM headers only, in parallel.

The index never reads pixel data (``stop_before_pixels``); it turns every image frame into a
small :class:`Frame` record that the grouping step sorts into volumes.  Files that are not DICOM
are *skipped* (listed, not errors); DICOM files that cannot become image frames (corrupt,
truncated, no pixel data, not an image) are *rejected* with the reason and the tag at fault.
DICOM SEG and RTSTRUCT files are neither: they are listed as ROI objects
(:class:`~voxelhub.dicom.roi_objects.RoiObject`) for ingest to attach to the series they reference.
"""

from __future__ import annotations

import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import IO, TYPE_CHECKING, Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from voxelhub.dicom import acquisition, colour, multiframe
from voxelhub.dicom.acquisition import Diffusion
from voxelhub.dicom.roi_objects import RoiObject, roi_object

if TYPE_CHECKING:  # process pools and notebook progress bars load only when used
    from concurrent.futures import Future
    from multiprocessing.context import BaseContext

log = logging.getLogger(__name__)

ZIP_SEP = "!/"
"""Separator between a zip archive's path and a member's name in a source string."""


@dataclass(frozen=True)
class Frame:
    """One 2-D image frame, with what grouping, geometry and decoding need.

    A classic single-frame file gives one Frame (``frame_index`` is None); an Enhanced
    multi-frame file gives one Frame per frame, with geometry and rescale read from its
    functional groups.
    """

    source: str
    frame_index: int | None
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    patient_id: str
    study_instance_uid: str
    series_instance_uid: str
    series_number: int | None
    modality: str
    rows: int
    columns: int
    image_position: tuple[float, float, float] | None
    image_orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    rescale_slope: float
    rescale_intercept: float
    bits_allocated: int
    bits_stored: int
    pixel_representation: int
    samples_per_pixel: int
    image_type: tuple[str, ...] = ()
    echo_number: int | None = None
    echo_time: float | None = None
    acquisition_number: int | None = None
    temporal_position: int | None = None
    dimension_index: tuple[int, ...] = ()
    gantry_tilt: float | None = None
    slice_spacing: float | None = None
    is_mosaic: bool = False
    mosaic_vendor: str | None = None
    instance_number: int | None = None
    trigger_time: float | None = None
    acquisition_time: float | None = None
    diffusion: Diffusion | None = None
    asl_label: str | None = None
    pepolar_mode: int | None = None
    philips_scale_slope: float | None = None
    vendor_image_kind: str | None = None
    """GE private image type (0043,102F): magnitude, phase, real or imaginary (None: not said)."""
    repetition_time: float | None = None
    photometric: str = "MONOCHROME2"
    """PhotometricInterpretation: a colour frame (``samples_per_pixel`` 3) decodes to RGB."""
    pixel_offset: int | None = field(default=None, compare=False)
    """Where the file's Pixel Data element starts (its tag), for a classic single-frame file:
    the pixels can be read there without parsing the header again."""

    @property
    def volume_key(self) -> tuple[Any, ...]:
        """What a vendor records per volume: frames of one volume of a 4-D series share it."""
        d = self.diffusion
        gradient = (
            None if d is None or d.gradient is None else tuple(round(g, 4) for g in d.gradient)
        )
        return (
            self.temporal_position,
            self.acquisition_number,
            None if d is None else round(d.b_value, 2),
            gradient,
            self.asl_label,
        )


@dataclass(frozen=True)
class Rejected:
    """A DICOM file that could not be indexed, with the reason and the tag at fault."""

    source: str
    reason: str
    tag: str | None = None
    sop_instance_uid: str | None = None
    """The file's SOPInstanceUID when its header could be read that far (None otherwise)."""


@dataclass
class IndexResult:
    """What one indexing pass found: image frames, rejected files and non-DICOM files."""

    frames: list[Frame] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rois: list[RoiObject] = field(default_factory=list)
    """SEG and RTSTRUCT files: ROIs to attach to the series they reference, not images."""

    def extend(self, other: IndexResult) -> None:
        self.frames.extend(other.frames)
        self.rejected.extend(other.rejected)
        self.skipped.extend(other.skipped)
        self.rois.extend(other.rois)


def iter_sources(paths: Iterable[str | os.PathLike[str]]) -> Iterator[str]:
    """Yield every file under ``paths`` (folders walked, zip archives opened), sorted per folder.

    Zip members are yielded as ``"archive.zip!/member"``.  Nothing is read but names.
    """
    for p in paths:
        path = os.fspath(p)
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield from _expand(os.path.join(root, name))
        elif os.path.exists(path):
            yield from _expand(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")


def _expand(path: str) -> Iterator[str]:
    if path.lower().endswith(".zip") and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if not info.is_dir():
                    yield f"{path}{ZIP_SEP}{info.filename}"
    else:
        yield path


def open_source(source: str) -> IO[bytes]:
    """Open a source string (a path, or ``archive.zip!/member``) for binary reading."""
    if ZIP_SEP in source:
        archive, member = source.split(ZIP_SEP, 1)
        zf = zipfile.ZipFile(archive)
        return zf.open(member)
    return open(source, "rb")


def source_size(source: str) -> int:
    """Size in bytes of a source, without reading it."""
    if ZIP_SEP in source:
        archive, member = source.split(ZIP_SEP, 1)
        with zipfile.ZipFile(archive) as zf:
            return zf.getinfo(member).file_size
    return os.path.getsize(source)


def _num(ds: Dataset, keyword: str, default: Any = None) -> Any:
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    return value


def _first_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return float(value[0]) if len(value) else None
    return float(value)


def _int_or_none(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        value = value[0] if len(value) else None
        if value is None:
            return None
    return int(value)


_EXPECTED_VR_HEADER = {True: 12, False: 8}


def _check_pixel_payload(ds: Dataset, remaining: int, source: str) -> Rejected | None:
    """Reject files whose pixel data is missing or shorter than the header promises."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is not None and pydicom.uid.UID(ts).is_deflated:
        return None  # the file position is in the compressed stream: the decoder checks it
    if remaining <= 0:
        return Rejected(
            source, "no pixel data: not an image, or the file ends before it", "(7FE0,0010)"
        )
    if ts is not None and pydicom.uid.UID(ts).is_compressed:
        return None  # encapsulated: the decoder checks the payload
    frames = int(_num(ds, "NumberOfFrames", 1) or 1)
    expected = (
        int(ds.Rows)
        * int(ds.Columns)
        * int(_num(ds, "SamplesPerPixel", 1))
        * frames
        * int(ds.BitsAllocated)
        // 8
    )
    if colour.is_subsampled(ds):  # native YBR_FULL_422: two samples per pixel on average
        expected = expected * 2 // 3
    explicit = ts is None or pydicom.uid.UID(ts) != pydicom.uid.ImplicitVRLittleEndian
    available = remaining - _EXPECTED_VR_HEADER[explicit]
    if available < expected:
        return Rejected(
            source,
            f"truncated: pixel data has {max(available, 0)} of {expected} bytes",
            "(7FE0,0010)",
        )
    return None


def read_frames(source: str) -> IndexResult:
    """Read one file's header and return its frames, or why it was rejected or skipped.

    Never raises: whatever pydicom, a codec or a damaged value raises (``NotImplementedError``
    for an unknown VR, ``struct.error``, ``OverflowError`` …) makes this one file a rejected
    row naming the exception and, where pydicom says, the tag; the rest of the ingest goes on.
    """
    result = IndexResult()
    try:
        with open_source(source) as fp:
            try:
                ds = pydicom.dcmread(fp, stop_before_pixels=True)
            except InvalidDicomError:
                result.skipped.append(source)
                return result
            header_end = fp.tell()
        size = source_size(source)
    except Exception as exc:  # any failure to parse is this file's problem, never the ingest's
        result.rejected.append(
            Rejected(source, f"unreadable DICOM header: {_describe(exc)}", _tag_of(exc))
        )
        return result
    try:
        _frames_of(ds, source, size - header_end, result)
        if len(result.frames) == 1 and result.frames[0].frame_index is None:
            result.frames[0] = replace(result.frames[0], pixel_offset=header_end)
    except Exception as exc:  # a value pydicom parses lazily can fail here (unknown VR …)
        result.frames.clear()
        result.rejected.append(
            Rejected(source, f"invalid image header: {_describe(exc)}", _tag_of(exc))
        )
    if result.rejected:  # lets a report name the file by its (pseudonymised) UID
        uid = _sop_instance_uid(ds)
        result.rejected = [replace(r, sop_instance_uid=uid) for r in result.rejected]
    return result


def _sop_instance_uid(ds: Dataset) -> str | None:
    try:
        uid = str(ds.get("SOPInstanceUID", "") or "").strip(" \x00")
    except Exception:  # a damaged value: the file is rejected anyway
        return None
    return uid or None


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or "no message"
    return f"{type(exc).__name__}: {text}"


_TAG_IN_TEXT = re.compile(r"\(([0-9A-Fa-f]{4}),\s*([0-9A-Fa-f]{4})\)")


def _tag_of(exc: BaseException) -> str | None:
    """The DICOM tag an exception names, as ``(GGGG,EEEE)``, if its message names one."""
    found = _TAG_IN_TEXT.search(str(exc))
    return f"({found.group(1).upper()},{found.group(2).upper()})" if found else None


def _frames_of(ds: Dataset, source: str, remaining: int, result: IndexResult) -> None:
    found = roi_object(ds, source)
    if found is not None:
        result.rois.append(found)
        return
    sop_class = str(ds.get("SOPClassUID", ""))
    if "Rows" not in ds or "Columns" not in ds:
        name = pydicom.uid.UID(sop_class).name if sop_class else "no SOP class"
        result.rejected.append(Rejected(source, f"not an image: {name}", "(0028,0010)"))
        return
    refusal = colour.unsupported(ds)
    if refusal is not None:
        result.rejected.append(Rejected(source, refusal.reason, refusal.tag))
        return
    problem = _check_pixel_payload(ds, remaining, source)
    if problem is not None:
        result.rejected.append(problem)
        return
    frames = int(_num(ds, "NumberOfFrames", 1) or 1)
    if frames > 1 and not multiframe.is_enhanced(ds):
        result.rejected.append(
            Rejected(
                source,
                f"multi-frame image without functional groups ({frames} frames of "
                f"{pydicom.uid.UID(sop_class).name}): per-frame geometry is not defined "
                "for this kind yet",
                "(0028,0008)",
            )
        )
        return
    if multiframe.is_enhanced(ds):
        result.frames.extend(multiframe.frames_from_enhanced(ds, source, _common(ds, source)))
    else:
        result.frames.append(_classic_frame(ds, source))


def _common(ds: Dataset, source: str) -> dict[str, Any]:
    """Fields shared by all frames of one file."""
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    return dict(
        source=source,
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        transfer_syntax_uid=ts or str(pydicom.uid.ImplicitVRLittleEndian),
        patient_id=str(ds.get("PatientID", "")),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        series_number=_int_or_none(ds.get("SeriesNumber")),
        modality=str(ds.get("Modality", "OT")),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        bits_allocated=int(ds.BitsAllocated),
        bits_stored=int(_num(ds, "BitsStored", ds.BitsAllocated)),
        pixel_representation=int(_num(ds, "PixelRepresentation", 0)),
        samples_per_pixel=int(_num(ds, "SamplesPerPixel", 1)),
        acquisition_number=_int_or_none(ds.get("AcquisitionNumber")),
        gantry_tilt=_first_float(ds.get("GantryDetectorTilt")),
        slice_spacing=_first_float(ds.get("SpacingBetweenSlices"))
        or _first_float(ds.get("SliceThickness")),
        instance_number=_int_or_none(ds.get("InstanceNumber")),
        pepolar_mode=acquisition.ge_pepolar_mode(ds),
        vendor_image_kind=acquisition.ge_image_kind(ds),
        repetition_time=_first_float(ds.get("RepetitionTime")),
        photometric=colour.photometric(ds),
    )


def _classic_frame(ds: Dataset, source: str) -> Frame:
    ipp = ds.get("ImagePositionPatient")
    iop = ds.get("ImageOrientationPatient")
    ps = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    image_type = tuple(str(x) for x in (ds.get("ImageType") or ()))
    mosaic_vendor = _mosaic_vendor(ds, image_type)
    return Frame(
        frame_index=None,
        image_position=tuple(float(x) for x in ipp) if ipp else None,  # type: ignore[arg-type]
        image_orientation=tuple(float(x) for x in iop) if iop else None,  # type: ignore[arg-type]
        pixel_spacing=(float(ps[0]), float(ps[1])) if ps else None,
        rescale_slope=float(_num(ds, "RescaleSlope", 1.0)),
        rescale_intercept=float(_num(ds, "RescaleIntercept", 0.0)),
        image_type=image_type,
        echo_number=_int_or_none(ds.get("EchoNumbers")),
        echo_time=_first_float(ds.get("EchoTime")),
        temporal_position=_int_or_none(ds.get("TemporalPositionIdentifier")),
        is_mosaic=mosaic_vendor is not None,
        mosaic_vendor=mosaic_vendor,
        trigger_time=_first_float(ds.get("TriggerTime")),
        acquisition_time=seconds_of_day(ds.get("AcquisitionTime")),
        diffusion=acquisition.read_diffusion(ds),
        asl_label=acquisition.asl_label(ds),
        philips_scale_slope=acquisition.philips_scale_slope(ds),
        **_common(ds, source),
    )


def _mosaic_vendor(ds: Dataset, image_type: tuple[str, ...]) -> str | None:
    """'siemens' (CSA mosaic), 'uih' (VFRAME with per-slice positions) or None."""
    if "MOSAIC" in image_type:
        return "siemens"
    if "VFRAME" in image_type and (0x0065, 0x1051) in ds:
        return "uih"
    return None


def seconds_of_day(value: Any) -> float | None:
    """A DICOM TM value (``HHMMSS.FFFFFF``) as seconds since midnight; None if absent/garbled."""
    text = str(value or "").strip().replace(":", "")
    if len(text) < 2 or not text.split(".")[0].isdigit():
        return None
    try:
        hours = int(text[0:2])
        minutes = int(text[2:4] or 0)
        seconds = float(text[4:] or 0)
    except ValueError:
        return None
    return hours * 3600 + minutes * 60 + seconds


def process_context() -> BaseContext:
    """Start method for worker processes: ``fork`` where it exists.

    ``forkserver``/``spawn`` re-import the caller's main module in every worker, which breaks
    scripts without an ``if __name__ == "__main__"`` guard; the workers here only parse files
    and never touch locks the parent's threads may hold.
    """
    from multiprocessing import get_all_start_methods, get_context

    methods = get_all_start_methods()
    return get_context("fork" if "fork" in methods else "spawn")


def _read_batch(sources: Sequence[str]) -> IndexResult:
    result = IndexResult()
    for source in sources:
        result.extend(read_frames(source))
    return result


def index(
    paths: Iterable[str | os.PathLike[str]],
    *,
    workers: int | None = None,
    batch_size: int = 64,
    progress: bool = True,
    while_reading: Callable[[], object] | None = None,
) -> IndexResult:
    """Index every DICOM file under ``paths`` (headers only), in parallel processes.

    Parameters
    ----------
    paths
        Folders, files or zip archives.
    workers
        Worker processes; default one per CPU.  ``0`` or ``1`` reads in this process.
    batch_size
        Files per task; at most ``2 * workers`` batches are in flight, so memory stays bounded
        however large the folder is.
    progress
        Show a progress bar (tqdm) counting files.
    while_reading
        Called here once the worker processes are started (never with one worker): work of
        the caller's that can overlap the reading, such as loading modules, goes there.
    """
    workers = (os.cpu_count() or 1) if workers is None else workers
    result = IndexResult()
    bar: Any = _NoProgress()
    if progress:
        from tqdm.auto import tqdm  # a notebook widget where there is one

        bar = tqdm(desc="indexing", unit="file")
    sources = iter_sources(paths)
    try:
        if workers <= 1:
            for source in sources:
                result.extend(read_frames(source))
                bar.update()
            return result
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers, mp_context=process_context()) as pool:
            pending: list[tuple[int, Future[IndexResult]]] = []
            for batch in _batches(sources, batch_size):
                pending.append((len(batch), pool.submit(_read_batch, batch)))
                if while_reading is not None:  # every worker forked with the first batch
                    while_reading()
                    while_reading = None
                if len(pending) >= 2 * workers:
                    n, fut = pending.pop(0)
                    result.extend(fut.result())
                    bar.update(n)
            for n, fut in pending:
                result.extend(fut.result())
                bar.update(n)
    finally:
        bar.close()
    return result


class _NoProgress:
    """A quiet index's bar: even a disabled tqdm loads asyncio and multiprocessing (≈ 10 ms)."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
