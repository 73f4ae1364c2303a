"""Ingest orchestration: DICOM files → de-identified, verified OME-Zarr volumes + catalog rows.

index (headers, parallel; before the store and catalog are opened) → plan (group, split,
geometry) → for each volume (in worker processes when there are several volumes and workers):
de-identify the header, convert the pixels slab by slab into a temporary OME-Zarr, verify,
move it into place → the parent commits the catalog row, the commit point.  A file or volume that fails is listed in the report with the reason and never
stops the rest.  Ingesting the same files twice changes nothing: a volume whose content key is
already in the catalog (and whose store is there) is left alone.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from voxelhub import config
from voxelhub.errors import DicomError, GeometryError, StoreError, VoxelHubError

if TYPE_CHECKING:
    from concurrent.futures import Executor

    from pydicom.dataset import Dataset

    from voxelhub.catalog import Catalog, Project
    from voxelhub.dicom.series import VolumePlan
    from voxelhub.source_names import SourceNames
    from voxelhub.store.location import Location
    from voxelhub.store.writer import WrittenVolume

# The heavy modules (pydicom, zarr, SQLAlchemy, pandas…) are imported inside the functions that
# use them: `import voxelhub` stays cheap and `voxelhub ingest` reads its first file after
# importing only what the header index needs.

log = logging.getLogger(__name__)

_PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# Header elements too bulky or too frame-specific to copy into the volume's attributes.
_DROP_FROM_METADATA = {"PerFrameFunctionalGroupsSequence", "PixelData", "ReferencedImageSequence"}
_POOL_MIN_SLICES = 32


@dataclass
class IngestReport:
    """What an ingest did: volumes written or unchanged, and every file or volume it refused."""

    project: str
    paths: list[str]
    files_seen: int = 0
    frames: int = 0
    duplicates: int = 0
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    rejected_files: list[dict[str, str]] = field(default_factory=list)
    non_dicom: list[str] = field(default_factory=list)
    superseded: dict[str, str] = field(default_factory=dict)
    labels: list[dict[str, Any]] = field(default_factory=list)
    """SEG and RTSTRUCT files found: attached to their series' volumes as label images, pending
    (their series is not stored yet) or failed (see :mod:`voxelhub.roi.attach`)."""
    report_id: int | None = None
    paths_withheld: bool = False
    """True in a de-identified project: ``paths``, ``non_dicom`` and every ``source`` hold
    labels (position, keyed reference, SOPInstanceUID pseudonym), never a path or file name
    (see :mod:`voxelhub.source_names`)."""

    @property
    def exit_code(self) -> int:
        """What ``voxelhub ingest`` exits with: 0 all done, 1 some refused, 2 nothing written.

        0: every DICOM image found was ingested or was already there unchanged; 1: some files
        or volumes were rejected or failed and the rest was written; 2: nothing was written or
        found unchanged although DICOM files were found (or no DICOM file was found at all).
        """
        attached = sum(item["status"] == "attached" for item in self.labels)
        done = len(self.written) + len(self.unchanged) + attached
        if done == 0:
            return 2
        return 1 if self.failed or self.rejected_files else 0

    def summary(self, *, max_groups: int = 50) -> str:
        """One paragraph a person can read at the end of a long ingest.

        Refusals are grouped: one line per (series, reason) with a count and the first file;
        the full list is in the report (``rejected_files``) and the catalog.
        """
        lines = [
            f"project {self.project}: {len(self.written)} volume(s) written, "
            f"{len(self.unchanged)} unchanged, {len(self.failed)} failed; "
            f"{self.files_seen} file(s) seen, {self.frames} frame(s), "
            f"{self.duplicates} duplicate instance(s) ingested once, "
            f"{len(self.non_dicom)} non-DICOM file(s) skipped, "
            f"{len(self.rejected_files)} DICOM file(s) rejected"
        ]
        if self.paths_withheld:
            from voxelhub.source_names import withheld_note

            lines.append(
                f"  {withheld_note(self.project)}: files are named by position and keyed ref "
                f"(`voxelhub locate FOLDER --project {self.project} --ref REF` finds one)"
            )
        groups: dict[tuple[str, str, str], list[str]] = {}
        for item in self.rejected_files:
            key = (item.get("series_uid", ""), item["reason"], item.get("tag", ""))
            groups.setdefault(key, []).append(item["source"])
        for n, ((series, reason, tag), sources) in enumerate(groups.items()):
            if n == max_groups:
                lines.append(f"  … {len(groups) - max_groups} more reason(s): see the report")
                break
            where = f" of series {series}" if series else ""
            tagged = f" [{tag}]" if tag else ""
            count = f"{len(sources)} files" if len(sources) > 1 else "1 file"
            first = f" (first: {sources[0]})" if len(sources) > 1 else f": {sources[0]}"
            lines.append(f"  rejected {count}{where}{first}: {reason}{tagged}")
        for item in self.failed:
            lines.append(
                f"  failed volume of series {item['series_uid']} ({item['split'] or 'whole'}): "
                f"{item['reason']}"
            )
        for item in self.labels:
            what = f"{item['kind']} {item['source']}"
            if item["status"] == "attached":
                lines.append(f"  attached {what} as label image(s) {item['labels']}")
            else:
                lines.append(f"  {item['status']} {what}: {item['reason']}")
        for old, kept in self.superseded.items():
            lines.append(f"  labels of replaced {old} kept with it at {kept} (grid changed)")
        if self.exit_code == 2 and not self.failed:
            lines.append("  nothing was written: no DICOM image could be converted")
        return "\n".join(lines)


def ingest(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
    store: str | os.PathLike[str] | Location,
    *,
    project: str = "default",
    deidentify: bool | None = None,
    catalog_url: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    encrypt: bool | None = None,
    key_file: str | os.PathLike[str] | None = None,
) -> IngestReport:
    """Ingest DICOM folders, files or zip archives into a store.

    Parameters
    ----------
    paths
        One or more folders, files or zip archives.
    store
        Store URL (local path, ``s3://…``) or a Location.
    project
        Project the data belongs to (created on first use).
    deidentify
        Apply the PS3.15 Basic Profile before anything is written.  ``None`` follows the
        project's setting; a project never changes setting once it holds data.
    catalog_url
        SQLAlchemy URL of the catalog; default SQLite inside a local store.
    workers
        Processes for header reading and pixel decoding; default one per CPU.
    progress
        Show progress bars.
    encrypt
        Seal every chunk and the attributes that can carry PHI with the project's data key
        (made on first write).  ``None`` follows the project's setting; encryption can be
        turned on only while the project holds no volume, and never off.
    key_file
        The master key file (default ``$VOXELHUB_KEY_FILE``); needed for encrypted projects.
    """
    if isinstance(paths, str | os.PathLike):
        paths = [paths]
    path_list = [os.fspath(p) for p in paths]
    if not _PROJECT_NAME.match(project):
        raise VoxelHubError(
            f"invalid project name {project!r}: use letters, digits, '.', '_' or '-' (max 64)"
        )
    from voxelhub.dicom.index import index
    from voxelhub.memory import limit_malloc_arenas

    # zarr's thread pool would otherwise give every thread a glibc arena holding freed slabs:
    # the cap keeps a notebook's ingest bounded by slabs too (see voxelhub.memory)
    limit_malloc_arenas()
    started = dt.datetime.now(dt.UTC)
    workers = (os.cpu_count() or 1) if workers is None else workers
    # headers first; with index workers, the store and catalog modules (zarr, SQLAlchemy) load
    # in a thread while they read, after they have forked (never a fork during an import)
    loader = threading.Thread(target=_load_store_modules, name="voxelhub-imports", daemon=True)
    try:
        found = index(path_list, workers=workers, progress=progress, while_reading=loader.start)
    finally:
        if loader.ident is not None:
            loader.join()

    from voxelhub.catalog import Catalog
    from voxelhub.fsck import collect_garbage
    from voxelhub.source_names import SourceNames
    from voxelhub.store.location import open_location

    location = open_location(store)
    location.ensure_root()
    catalog = Catalog(location, catalog_url)
    try:
        for leftover in collect_garbage(location, catalog):
            log.info("removed %s, left by an interrupted ingest", leftover)
        from voxelhub.store.encryption import codec_for, open_store_keys

        if encrypt:  # the key first: a project is never marked encrypted without one
            open_store_keys(location, key_file)
        proj = catalog.ensure_project(project, deidentify=deidentify, encrypt=encrypt)
        if proj.encrypted and not encrypt:
            open_store_keys(location, key_file)
        if proj.encrypted:  # the project's data key, made here before workers fork
            codec_for(project)
        # a new project's folder starts private; the hub opens it to the project's unix group
        location.ensure_private_dir(f"projects/{project}")
        deid = _deidentifier(proj) if proj.deidentify else None
        # a de-identified project never stores a path: sites name folders after the patient
        names = SourceNames(path_list, project, deid)
        report = IngestReport(
            project=project, paths=names.ingest_roots(), paths_withheld=names.withheld
        )
        report.frames = len(found.frames)
        report.non_dicom = found.skipped
        report.rejected_files = [
            {"source": r.source, "reason": r.reason, "tag": r.tag or "", "series_uid": ""}
            for r in found.rejected
        ]
        report.files_seen = (
            len({f.source for f in found.frames})
            + len(found.rejected)
            + len(found.skipped)
            + len(found.rois)
        )
        from tqdm.auto import tqdm

        from voxelhub.dicom.roi_objects import pending_root
        from voxelhub.dicom.series import plan_volumes
        from voxelhub.dicom.slabs import volume_shape

        plan = plan_volumes(found.frames)
        report.duplicates = plan.duplicates
        for rv in plan.rejected:
            for source in rv.sources:
                report.rejected_files.append(
                    {
                        "source": source,
                        "reason": rv.reason,
                        "tag": "",
                        "series_uid": _out_uid(deid, rv.series_instance_uid),
                    }
                )
        total = sum(volume_shape(v)[0] * v.n_timepoints for v in plan.volumes)
        bar = tqdm(total=total, desc="converting", unit="slice", disable=not progress)
        try:
            _convert_volumes(
                catalog, location, proj, plan.volumes, deid, names, report, workers, bar
            )
        finally:
            bar.close()
        if found.rois or location.exists(pending_root(project)):
            # SEG / RTSTRUCT: label images of the series they reference (and earlier ones
            # whose series this ingest brought)
            _attach_labels(catalog, project, found.rois, deid, names, report)
        if names.withheld:
            _name_sources(report, names, found)
            for item in report.labels:
                if item["source"] in {obj.source for obj in found.rois}:
                    item["source"] = names.name(item["source"])
        report.report_id = catalog.record_report(
            proj,
            {
                "started_at": started,
                "paths": report.paths,
                "paths_withheld": report.paths_withheld,
                "files_seen": report.files_seen,
                "frames": report.frames,
                "volumes_written": len(report.written),
                "volumes_unchanged": len(report.unchanged),
                "volumes_failed": len(report.failed),
                "duplicates": report.duplicates,
                "non_dicom": report.non_dicom,
            },
            report.rejected_files
            + [
                {
                    "source": f["sources"],
                    "reason": f["reason"],
                    "tag": f.get("tag", ""),
                    "series_uid": f["series_uid"],
                }
                for f in report.failed
            ],
        )
        log.info("%s", report.summary())
        return report
    finally:
        catalog.close()


def _attach_labels(
    catalog: Catalog,
    project: str,
    rois: list[Any],
    deid: Any,
    names: SourceNames,
    report: IngestReport,
) -> None:
    from voxelhub.roi.attach import attach_rois

    report.labels = attach_rois(
        catalog,
        project,
        rois,
        out_uid=lambda uid: _out_uid(deid, uid),
        deid=deid,
        name_of=names.name,
        reason_of=names.reason,
    )
    sources = {obj.source for obj in rois}
    for item, obj in zip(report.labels, rois, strict=False):
        item["source"] = obj.source  # named with the rest once the report is complete
    for item in report.labels:
        if item["status"] == "failed" and item["source"] in sources:
            reason = f"{item['kind']} not attached: {item['reason']}"
            report.rejected_files.append(
                {"source": item["source"], "reason": reason, "tag": "", "series_uid": ""}
            )


def _name_sources(report: IngestReport, names: SourceNames, found: Any) -> None:
    """Replace every source path in ``report`` by its label, and withhold paths in reasons."""
    rejected = report.rejected_files
    failed = report.failed
    wanted = {r["source"] for r in rejected} | set(report.non_dicom)
    wanted |= {f["sources"] for f in failed}
    sop_uids = {r.source: r.sop_instance_uid for r in found.rejected if r.sop_instance_uid}
    sop_uids.update({f.source: f.sop_instance_uid for f in found.frames if f.source in wanted})
    names.prepare(wanted, sop_uids)
    for item in rejected:
        item["reason"] = names.reason(item["reason"], item["source"])
        item["source"] = names.name(item["source"])
    for item in failed:
        item["reason"] = names.reason(item["reason"], item["sources"])
        item["sources"] = names.name(item["sources"])
    report.non_dicom = [names.name(s) for s in report.non_dicom]


def _load_store_modules() -> None:
    """Import what the ingest needs after indexing (≈ 0.2 s of zarr, SQLAlchemy, numcodecs)."""
    try:
        import voxelhub.catalog
        import voxelhub.fsck
        import voxelhub.store.location
        import voxelhub.store.writer  # noqa: F401
    except Exception:  # the same import in the ingest raises it where it belongs
        pass


def _decode_is_costly(volume: VolumePlan) -> bool:
    """Worth a process pool: many compressed frames.  Uncompressed frames decode faster
    in-process than they can be pickled back from a worker (measured: 0.20 s vs 0.27 s for
    140 × 512² slices)."""
    import pydicom.uid

    return len(volume.frames) >= _POOL_MIN_SLICES and any(
        pydicom.uid.UID(f.transfer_syntax_uid).is_compressed for f in volume.frames[:4]
    )


def _deidentifier(project: Project) -> Any:
    from voxelhub.dicom.deid import Deidentifier, load_or_create_secret

    secret = load_or_create_secret(config.secrets_dir() / f"{project.name}.key")
    return Deidentifier(secret)


def _out_uid(deid: Any, uid: str) -> str:
    return deid.map_uid(uid) if deid is not None and uid else uid


def _hash(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class _Job:
    """One volume to convert: everything a worker process needs, all picklable."""

    volume: VolumePlan
    volume_uid: str
    series_uid: str
    instance_uids: list[str]
    content_key: str
    rel_path: str
    n_slices: int
    encrypt_for: str | None = None


@dataclass(frozen=True)
class _Converted:
    """What converting one volume gave: the committed tree and the header fields the catalog
    row needs, or why it failed (reason and source as raised; paths are withheld by the
    parent)."""

    written: WrittenVolume | None = None
    header: dict[str, str] = field(default_factory=dict)
    failure: dict[str, str] | None = None


_HEADER_FIELDS = (
    "PatientID",
    "PatientName",
    "PatientSex",
    "PatientBirthDate",
    "StudyInstanceUID",
    "StudyDate",
    "StudyDescription",
    "AccessionNumber",
    "BodyPartExamined",
    "SeriesDescription",
    "Manufacturer",
)


def _convert_volumes(
    catalog: Catalog,
    location: Location,
    project: Project,
    volumes: list[VolumePlan],
    deid: Any,
    names: SourceNames,
    report: IngestReport,
    workers: int,
    bar: Any,
) -> None:
    """Convert every planned volume and commit its catalog row, in plan order.

    With several volumes and workers, each volume is converted whole (decode, pyramid, write,
    verify, move into place) in a worker process, and the parent only records catalog rows;
    a single volume is converted here, its compressed frames decoded by a process pool.  The
    catalog row stays the commit point either way: a tree a worker moved into place is
    invisible until the parent's row lists it.
    """
    from voxelhub.memory import release_free_memory

    jobs: list[tuple[_Job, Any]] = []
    for volume in volumes:
        job, existing = _job(catalog, project, volume, deid)
        if (
            existing is not None
            and existing.content_key == job.content_key
            and location.exists(existing.store_path)
        ):
            report.unchanged.append(job.volume_uid)
            bar.update(job.n_slices)
        else:
            jobs.append((job, existing))
    if workers > 1 and len(jobs) > 1:
        done = _convert_in_workers(location, deid, [job for job, _ in jobs], workers)
        for (job, existing), converted in zip(jobs, done, strict=True):
            _record(catalog, location, project, job, existing, converted, names, report)
            bar.update(job.n_slices)
        return
    from voxelhub.store.ngff import SLAB_DEPTH

    pool: Executor | None = None
    # a volume of several slabs spreads them over the workers; a one-slab volume of costly
    # (compressed) frames spreads its frames instead
    if workers > 1 and any(
        _decode_is_costly(job.volume) and job.n_slices <= SLAB_DEPTH for job, _ in jobs
    ):
        from concurrent.futures import ProcessPoolExecutor

        from voxelhub.dicom.index import process_context

        pool = ProcessPoolExecutor(workers, mp_context=process_context())
    try:
        for job, existing in jobs:
            converted = _convert(location, deid, job, pool, bar.update, workers)
            _record(catalog, location, project, job, existing, converted, names, report)
            release_free_memory()
    finally:
        if pool is not None:
            pool.shutdown()


def _job(catalog: Catalog, project: Project, volume: VolumePlan, deid: Any) -> tuple[_Job, Any]:
    """The conversion job of ``volume`` and the catalog's current row for it (or None)."""
    from voxelhub.dicom.slabs import volume_shape

    series_uid = _out_uid(deid, volume.series_instance_uid)
    volume_uid = _hash(project.name, series_uid, volume.split_label)[:32]
    job = _Job(
        volume=volume,
        volume_uid=volume_uid,
        series_uid=series_uid,
        instance_uids=[_out_uid(deid, u) for u in volume.instance_uids],
        content_key=_hash(
            *(f"{_out_uid(deid, f.sop_instance_uid)}#{f.frame_index}" for f in volume.frames)
        ),
        # a fresh path per version: the catalog row is the commit point (see Location.commit)
        rel_path=f"projects/{project.name}/{volume_uid}/{uuid.uuid4().hex[:16]}.ome.zarr",
        n_slices=volume_shape(volume)[0] * volume.n_timepoints,
        encrypt_for=project.name if project.encrypted else None,
    )
    return job, catalog.find_volume(volume_uid)


# Set in each worker process of _convert_in_workers (fork copies them: nothing is pickled).
_worker_location: Location | None = None
_worker_deid: Any = None


def _init_worker(location: Location, deid: Any) -> None:
    global _worker_location, _worker_deid
    _worker_location, _worker_deid = location, deid


def _convert_in_worker(job: _Job) -> _Converted:
    assert _worker_location is not None
    return _convert(_worker_location, _worker_deid, job, None, None)


def _convert_in_workers(
    location: Location, deid: Any, jobs: list[_Job], workers: int
) -> Iterator[_Converted]:
    """Convert ``jobs`` in worker processes; results in the order of ``jobs``.

    A worker that dies (a segfault in a codec, the kernel's OOM killer) breaks the pool; the
    volumes it took down with it are converted again one at a time, each in a fresh process,
    so only the volume that kills its process fails.
    """
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # the conversion modules, loaded once before the fork rather than once in every worker
    from voxelhub.dicom import metadata, slabs  # noqa: F401
    from voxelhub.dicom.index import process_context
    from voxelhub.store import writer  # noqa: F401

    pool = ProcessPoolExecutor(
        min(workers, len(jobs)),
        mp_context=process_context(),
        initializer=_init_worker,
        initargs=(location, deid),
    )
    try:
        futures = [pool.submit(_convert_in_worker, job) for job in jobs]
        for job, future in zip(jobs, futures, strict=True):
            try:
                yield future.result()
            except BrokenProcessPool:
                yield _convert_alone(location, deid, job)
    finally:
        pool.shutdown(cancel_futures=True)


def _convert_alone(location: Location, deid: Any, job: _Job) -> _Converted:
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    from voxelhub.dicom.index import process_context

    with ProcessPoolExecutor(
        1, mp_context=process_context(), initializer=_init_worker, initargs=(location, deid)
    ) as pool:
        try:
            return pool.submit(_convert_in_worker, job).result()
        except BrokenProcessPool as exc:
            reason = f"the process converting this volume died ({exc})"
            return _Converted(
                failure={"reason": reason, "tag": "", "sources": job.volume.frames[0].source}
            )


def _convert(
    location: Location,
    deid: Any,
    job: _Job,
    pool: Executor | None,
    on_slab: Callable[[int], Any] | None,
    workers: int = 1,
) -> _Converted:
    """Read and de-identify the header, write the volume's tree and move it into place;
    ``workers`` processes write its slabs."""
    from voxelhub.dicom.metadata import acquisition_block
    from voxelhub.store.writer import write_volume

    volume = job.volume
    try:
        raw_header = _read_header(volume)
        header = _deidentified(raw_header, deid)
        metadata = _metadata(header)
        attrs = {
            "volume_uid": job.volume_uid,
            "series_uid": job.series_uid,
            "study_uid": str(header.get("StudyInstanceUID", "")),
            "patient_id": str(header.get("PatientID", "")),
            "modality": volume.modality,
            "split": volume.split_label,
            "series_description": str(header.get("SeriesDescription", "")),
            "name": "",
            "deidentified": deid is not None,
            "dicom": metadata,
            "source_instance_uids": job.instance_uids,
            "rescale": sorted({(f.rescale_slope, f.rescale_intercept) for f in volume.frames}),
            "acquisition": acquisition_block(
                volume, raw_header, header if deid is not None else None
            ),
        }
        name = (
            " ".join(x for x in (str(header.get("SeriesDescription", "")), volume.split_label) if x)
            or job.volume_uid
        )
        attrs["name"] = name
        written = write_volume(
            location,
            job.rel_path,
            volume,
            name=name,
            attrs=attrs,
            pool=pool,
            on_slab=on_slab,
            encrypt_for=job.encrypt_for,
            workers=workers,
        )
    except Exception as exc:  # whatever one volume raises (MemoryError too) fails it alone
        if not isinstance(exc, DicomError | GeometryError | StoreError | OSError | ValueError):
            exc = StoreError(f"{type(exc).__name__}: {exc}")
        source = getattr(exc, "path", None) or volume.frames[0].source
        tag = getattr(exc, "tag", None) or ""
        return _Converted(failure={"reason": str(exc), "tag": tag, "sources": source})
    fields = {key: str(header.get(key, "")) for key in _HEADER_FIELDS}
    return _Converted(written=written, header=fields)


def _record(
    catalog: Catalog,
    location: Location,
    project: Project,
    job: _Job,
    existing: Any,
    converted: _Converted,
    names: SourceNames,
    report: IngestReport,
) -> None:
    """Commit the catalog row of a converted volume (the commit point), or report its failure."""
    volume = job.volume
    written = converted.written
    if written is None:
        failure = converted.failure or {"reason": "not converted", "tag": "", "sources": ""}
        source = failure["sources"] or volume.frames[0].source
        reason = names.reason(failure["reason"], source)  # a message may quote the file's path
        log.warning("series %s (%s) failed: %s", job.series_uid, volume.split_label, reason)
        report.failed.append(
            {
                "series_uid": job.series_uid,
                "split": volume.split_label,
                "reason": reason,
                "tag": failure["tag"],
                "sources": source,
            }
        )
        return
    header = converted.header
    geometry = volume.geometry
    if existing is not None and location.exists(existing.store_path):
        _carry_labels(location, existing.store_path, job.rel_path, report)
    replaced = catalog.record_volume(
        project,
        patient={
            "patient_key": header["PatientID"],
            "patient_name": header["PatientName"],
            "sex": header["PatientSex"],
            "birth_date": header["PatientBirthDate"],
        },
        study={
            "study_uid": header["StudyInstanceUID"],
            "study_date": header["StudyDate"],
            "description": header["StudyDescription"],
            "accession_number": header["AccessionNumber"],
        },
        volume={
            "volume_uid": job.volume_uid,
            "series_uid": job.series_uid,
            "series_number": volume.series_number,
            "split": volume.split_label,
            "modality": volume.modality,
            "body_part": header["BodyPartExamined"],
            "description": header["SeriesDescription"],
            "manufacturer": header["Manufacturer"],
            "slices": written.shape[-3],
            "rows": written.shape[-2],
            "columns": written.shape[-1],
            "timepoints": written.timepoints,
            "channels": written.channels,
            "spacing_z": geometry.spacing[0],
            "spacing_y": geometry.spacing[1],
            "spacing_x": geometry.spacing[2],
            "dtype": written.dtype,
            "flags": geometry.flag_codes(),
            "reasons": "; ".join(f"[{f.code}] {f.reason}" for f in geometry.flags),
            "store_path": job.rel_path,
            "checksum": written.checksum,
            "content_key": job.content_key,
            "n_instances": len(job.instance_uids),
        },
    )
    if replaced and replaced not in report.superseded:
        location.remove(replaced)
    report.written.append(job.volume_uid)


def _carry_labels(location: Location, old_rel: str, new_rel: str, report: IngestReport) -> None:
    """Keep a replaced version's label images: copied when the grid is unchanged, else kept.

    Labels (segmentations people made) must never be lost with a re-ingest.  On an unchanged
    grid they move to the new version; otherwise the old version is moved under ``superseded/``
    (where garbage collection never looks) and the report says where.
    """
    labels = f"{old_rel}/labels"
    if not location.exists(labels):
        return
    from voxelhub.store.stored import StoredVolume

    old = StoredVolume.from_store(location, {"store_path": old_rel})
    new = StoredVolume.from_store(location, {"store_path": new_rel})
    same_grid = old.shape == new.shape and old.geometry.affine_lps == new.geometry.affine_lps
    if same_grid:
        location.copy_tree(labels, f"{new_rel}/labels")
        return
    parent, name = old_rel.rsplit("/", 1)
    kept = f"{parent}/superseded/{name}"
    location.move_tree(old_rel, kept)
    report.superseded[old_rel] = kept
    log.warning(
        "%s has label images on a grid the new version does not share; kept at %s",
        old_rel,
        kept,
    )


def _read_header(volume: VolumePlan) -> Dataset:
    """The first instance's header (no pixels), as the scanner wrote it."""
    import pydicom

    from voxelhub.dicom.index import open_source

    source = volume.frames[0].source
    try:
        with open_source(source) as fp:
            return pydicom.dcmread(fp, stop_before_pixels=True)
    except Exception as exc:
        raise DicomError(f"cannot re-read header: {exc}", path=source) from exc


def _deidentified(ds: Dataset, deid: Any) -> Dataset:
    """A de-identified copy of ``ds`` when the project asks for it (``ds`` itself is kept)."""
    if deid is None:
        return ds
    copy = deepcopy(ds)
    deid.deidentify(copy)
    return copy


def _metadata(ds: Dataset) -> dict[str, Any]:
    """DICOM JSON (PS3.18 F.2) of a header, without private tags, pixels or per-frame groups."""
    from pydicom.dataset import Dataset

    copy = Dataset()
    for elem in ds:
        if elem.tag.is_private or elem.keyword in _DROP_FROM_METADATA:
            continue
        copy.add(elem)
    out: dict[str, Any] = copy.to_json_dict(
        bulk_data_threshold=4096, bulk_data_element_handler=lambda _el: ""
    )
    return out
