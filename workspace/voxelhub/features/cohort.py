"""Features for a whole cohort: one pure task per (series, ROI) on a Dask cluster.

::

    cat = voxelhub.open_catalog("store/")
    table = extract_many(cat.series(modality="CT"), roi=lambda v: v > 300, catalog=cat,
                         settings=Settings.preset("ibsi1_config_C"), save_to=cat)

Each task opens its series lazily on the worker and reads only the chunks around its ROI
(:func:`voxelhub.features.extract`), so the client never holds image data and a task's
memory is O(ROI), not O(volume). Tasks are pure functions of (series, ROI, settings): a task
lost with a killed worker is simply run again elsewhere and gives the same rows. A case that
fails records its error in an ``error`` column and the others finish.

:class:`CohortRun` is the engine under :func:`extract_many` (and under the feature panel):
resume from stored results, run the rest locally or on Dask with retries, store each case as
it finishes, hand each finished case to whoever iterates, and stop when cancelled.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from voxelhub.features.extract import extract
from voxelhub.features.results import COLUMNS, open_results
from voxelhub.features.settings import Settings

if TYPE_CHECKING:
    from voxelhub.store.stored import StoredVolume

__all__ = ["Case", "CohortRun", "Finished", "StoredLabels", "extract_many"]

log = logging.getLogger(__name__)

RoiSource = Any
"""A mask or label array (numpy, dask or DataArray), a callable ``volume -> mask``, or
:class:`StoredLabels` (a label image stored with each catalog volume)."""


@dataclass(frozen=True)
class _CatalogVolume:
    """A catalog volume at one level; its :class:`StoredVolume` is read on the worker.

    ``location`` is the catalog's store location and ``row`` the volume's catalog row (both
    picklable: they travel to the workers); nothing is read from the store on the client.
    """

    location: Any
    row: Mapping[str, Any]
    level: int = 0

    def stored(self) -> StoredVolume:
        from voxelhub.store.stored import StoredVolume

        return StoredVolume.from_store(self.location, self.row)

    def open(self) -> Any:
        return self.stored().open(self.level)


@dataclass(frozen=True)
class _Unavailable:
    """A selected volume the catalog could not give (unknown UID, no access): its case fails."""

    uid: str
    error: Exception

    def open(self) -> Any:
        raise self.error


@dataclass(frozen=True)
class StoredLabels:
    """ROI source: the label image ``name`` stored with each catalog volume.

    Written by :func:`voxelhub.roi.write_labels`; read on the worker. With ``labels=`` each
    label value is one ROI, else every non-zero voxel is the ROI. Label images exist on the
    full-resolution grid only, so a case at a coarser ``level`` fails with a clear error.
    """

    name: str

    def read(self, volume: Any) -> Any:
        """The label image of a catalog volume reference (not of an in-memory array)."""
        if isinstance(volume, _Unavailable):
            volume.open()
        if not isinstance(volume, _CatalogVolume):
            raise TypeError(
                f"label image {self.name!r} is stored with catalog volumes: select catalog "
                "rows or volume UIDs (with catalog=), not arrays"
            )
        if volume.level != 0:
            raise ValueError(f"label {self.name!r} exists at full resolution only: set level to 0")
        from voxelhub.roi.labels import read_stored_labels

        return read_stored_labels(volume.stored(), self.name)


@dataclass(frozen=True)
class Case:
    """One unit of work: a volume, one ROI of it, and the names the result rows carry.

    ``volume`` is an array (numpy, dask or DataArray) or a catalog reference opened on the
    worker; ``roi`` a mask, a label volume (with ``label``), a callable ``volume -> mask`` or
    :class:`StoredLabels`. Wrapping the arrays in this object keeps Dask from computing lazy
    inputs on the client: the task receives the lazy array and reads only what its ROI needs.
    """

    series: str
    roi_name: str
    volume: Any
    roi: RoiSource
    label: int | None = None
    spacing: tuple[float, float, float] | None = None

    @property
    def key(self) -> tuple[str, str]:
        """(series, ROI name): what a result row is stored and resumed under."""
        return self.series, self.roi_name

    def run(self, settings: Settings) -> pd.DataFrame:
        """The tidy feature rows of this case, or one row with the error (never raises)."""
        try:
            with _task_scheduler():
                labels = isinstance(self.roi, StoredLabels)
                mask = self.roi.read(self.volume) if labels else None  # its checks come first
                stored = isinstance(self.volume, (_CatalogVolume, _Unavailable))
                volume = self.volume.open() if stored else self.volume
                if not labels:
                    mask = self.roi(volume) if callable(self.roi) else self.roi
                if self.label is not None:
                    mask = _raw(mask) == self.label
                table = extract(volume, mask, settings, spacing=self.spacing)
            table.insert(0, "roi", self.roi_name)
            table.insert(0, "series", self.series)
            table["error"] = None
            return table[COLUMNS]
        except Exception as exc:  # a failing case is a result too; the cohort goes on
            log.warning("features of %s / %s failed: %s", self.series, self.roi_name, exc)
            return error_rows(self.series, self.roi_name, settings, f"{type(exc).__name__}: {exc}")


def _task_scheduler() -> AbstractContextManager[Any]:
    """On a Dask worker, one task is one thread's work: its chunk reads stay in this thread.

    Elsewhere (no client: the caller's thread, e.g. the feature panel's) nothing changes: dask's
    configuration is process-wide, and the caller's other computations must keep theirs.
    """
    import dask

    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return nullcontext()
    return dask.config.set(scheduler="synchronous")


def _raw(obj: Any) -> Any:
    return obj.data if hasattr(obj, "dims") and hasattr(obj, "attrs") else obj


def error_rows(series: str, roi: str, settings: Settings, message: str) -> pd.DataFrame:
    """The one-row table that stands for a failed case."""
    return pd.DataFrame(
        [[series, roi, None, None, np.nan, None, settings.hash, message]], columns=COLUMNS
    )


def _run_case(case: Case, settings_json: str) -> pd.DataFrame:
    """The task: module-level and pure, so any worker can (re)run it."""
    return case.run(Settings.from_json(settings_json))


def _rois(roi: Any, labels: Mapping[int, str] | None) -> list[tuple[str, RoiSource, int | None]]:
    """(name, source, label value) per ROI to extract from each series."""
    sources = [(str(k), v) for k, v in roi.items()] if isinstance(roi, Mapping) else [("roi", roi)]
    if not labels:
        return [(name, src, None) for name, src in sources]
    return [
        (lname if len(sources) == 1 else f"{name}/{lname}", src, int(value))
        for name, src in sources
        for value, lname in labels.items()
    ]


def _volume_refs(
    selection: pd.DataFrame | list[str], catalog: Any, level: int
) -> list[tuple[str, _CatalogVolume | _Unavailable]]:
    """(series name, reference) per catalog row or volume UID; nothing is opened here."""
    loc = catalog.location
    if isinstance(selection, pd.DataFrame):
        if "volume_uid" not in selection or "store_path" not in selection:
            raise ValueError(
                "the selection must be rows of Catalog.series() (volume_uid, store_path)"
            )
        rows = [{str(k): v for k, v in r.items()} for r in selection.to_dict("records")]
        return [(str(r["volume_uid"]), _CatalogVolume(loc, r, level)) for r in rows]
    from voxelhub.errors import VoxelHubError

    out: list[tuple[str, _CatalogVolume | _Unavailable]] = []
    for uid in selection:
        try:
            row = catalog.volume_row(uid)
        except VoxelHubError as exc:  # e.g. NotFound: this case fails, the others run
            out.append((uid, _Unavailable(uid, exc)))
            continue
        out.append((str(row["volume_uid"]), _CatalogVolume(loc, row, level)))
    return out


def cases(
    selection: pd.DataFrame | Iterable[str] | Iterable[tuple[str, Any, Any]],
    roi: RoiSource | Mapping[str, RoiSource] | None = None,
    *,
    catalog: Any = None,
    labels: Mapping[int, str] | None = None,
    spacing: Sequence[float] | None = None,
    level: int = 0,
) -> list[Case]:
    """The (series, ROI) cases of a selection; see :func:`extract_many`."""
    sp = None if spacing is None else (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    items: pd.DataFrame | list[Any] = (
        selection if isinstance(selection, pd.DataFrame) else list(selection)
    )
    uids = not isinstance(items, pd.DataFrame) and bool(items)
    uids = uids and all(isinstance(i, str) for i in items)
    if isinstance(items, pd.DataFrame) or uids:
        if catalog is None:
            raise ValueError(
                "a catalog selection needs catalog=: pass the Catalog its rows came from"
            )
        if roi is None:
            raise ValueError("catalog rows carry no ROI: pass roi= (a callable, mask or dict)")
        suffix = f"@level{level}" if level else ""
        return [
            Case(series, name + suffix, ref, src, value, sp)
            for series, ref in _volume_refs(items, catalog, int(level))
            for name, src, value in _rois(roi, labels)
        ]
    if level:
        raise ValueError("level= picks a stored pyramid level: it needs a catalog selection")
    out: list[Case] = []
    for item in items:
        name, volume, mask = item
        for rname, src, value in _rois(mask if roi is None else roi, labels):
            out.append(Case(str(name), rname, volume, src, value, sp))
    return out


def _current_client() -> Any:
    try:
        from distributed import get_client

        return get_client()
    except (ImportError, ValueError):
        return None


@dataclass(frozen=True)
class Finished:
    """One case done: its rows (feature rows, or one error row) and where they came from."""

    case: Case
    rows: pd.DataFrame
    stored: bool
    """True when the rows were stored by an earlier run (resumed), not computed now."""

    @property
    def failed(self) -> bool:
        return bool(self.rows["error"].notna().any())


class CohortRun:
    """The cases of a cohort, run once: iterate for each :class:`Finished` case as it ends.

    Cases already stored without error for these settings (``save_to`` with ``resume``) come
    first, without computing; the others run one after another here, or one Dask task each
    on ``client`` (default: the current ``distributed`` client) with ``retries``, and are
    stored as each finishes. :meth:`cancel` (from any thread) stops the run: no further case
    starts, pending Dask tasks are cancelled and iteration ends. :meth:`table` is everything
    finished so far, in case order.
    """

    def __init__(
        self,
        cases: Sequence[Case],
        settings: Settings | None = None,
        client: Any = None,
        *,
        save_to: Any = None,
        resume: bool = True,
        retries: int = 1,
    ) -> None:
        self.cases = list(cases)
        self.settings = settings or Settings()
        self.client = client
        self.retries = retries
        self.store = None if save_to is None else open_results(save_to)
        self._order = {c.key: i for i, c in enumerate(self.cases)}
        self._parts: list[pd.DataFrame] = []
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._futures: list[Any] = []
        self._nonce = uuid.uuid4().hex
        """In the task keys: a run after a cancelled one never meets its keys being cancelled."""
        self._started = False
        self.done: set[tuple[str, str]] = set()
        """Keys of the cases stored by an earlier run: their rows are loaded, not computed."""
        if self.store is not None and resume:
            self.done = self.store.done(self.settings) & set(self._order)
        self.todo = [c for c in self.cases if c.key not in self.done]
        """The cases to compute."""
        self.finished = 0
        """Cases finished so far (stored or computed)."""

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop: no further case starts, and pending Dask tasks are cancelled."""
        self._cancel.set()
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.cancel()

    def __iter__(self) -> Iterator[Finished]:
        if self._started:
            raise RuntimeError("a CohortRun runs once: make a new one to run again")
        self._started = True
        if self.done:
            log.info("resuming: %d of %d cases already stored", len(self.done), len(self.cases))
            yield from self._previous()
        if not self.todo or self.cancelled:
            return
        client = self.client if self.client is not None else _current_client()
        if client is None:
            for case in self.todo:
                if self.cancelled:
                    return
                yield self._finish(case, case.run(self.settings))
        else:
            yield from self._on_cluster(client, self.todo)

    def _previous(self) -> Iterator[Finished]:
        assert self.store is not None
        frame = self.store.load(self.settings, series=sorted({s for s, _ in self.done}))
        keys = list(zip(frame.series, frame.roi, strict=True))
        frame = frame[[k in self.done for k in keys]]
        groups = {
            (str(s), str(r)): rows.reset_index(drop=True)
            for (s, r), rows in frame.groupby(["series", "roi"], sort=False)
        }
        for case in self.cases:  # in case order
            rows = groups.pop(case.key, None)
            if rows is not None:
                self._record(rows)
                yield Finished(case, rows, stored=True)

    def _record(self, rows: pd.DataFrame) -> None:
        with self._lock:
            self._parts.append(rows)
            self.finished += 1

    def _finish(self, case: Case, rows: pd.DataFrame) -> Finished:
        if self.store is not None:
            self.store.save(rows, self.settings)
        self._record(rows)
        return Finished(case, rows, stored=False)

    def _on_cluster(self, client: Any, todo: list[Case]) -> Iterator[Finished]:
        """One task per case, collected as they complete; pending ones cancelled on exit."""
        from dask.base import tokenize
        from distributed import as_completed

        text = self.settings.to_json()
        futures: dict[Any, Case] = {}
        for case in todo:
            key = f"radiomics-{case.series}-{case.roi_name}-{tokenize(case, text, self._nonce)}"
            futures[client.submit(_run_case, case, text, key=key, retries=self.retries)] = case
        with self._lock:
            self._futures = list(futures)
        try:
            if self.cancelled:  # cancel() came while the tasks were being submitted
                return
            for fut in as_completed(list(futures)):
                if self.cancelled:
                    return
                case = futures[fut]
                try:
                    rows = fut.result()
                except Exception as exc:  # e.g. KilledWorker: the task failed on every attempt
                    if self.cancelled:
                        return
                    message = f"{type(exc).__name__}: {exc}"
                    rows = error_rows(case.series, case.roi_name, self.settings, message)
                fut.release()
                yield self._finish(case, rows)
        finally:
            with self._lock:
                self._futures = []
            pending = [f for f in futures if not f.done()]
            if pending:
                client.cancel(pending)

    def table(self) -> pd.DataFrame:
        """The rows of every case finished so far, in case order (then feature order)."""
        with self._lock:
            parts = list(self._parts)
        if not parts:
            return pd.DataFrame(columns=COLUMNS)
        result = pd.concat([p for p in parts if not p.empty] or parts, ignore_index=True)
        n = len(self._order)
        rank = [self._order.get(k, n) for k in zip(result.series, result.roi, strict=True)]
        result = result.assign(_rank=rank, _pos=np.arange(len(result)))
        result = result.sort_values(["_rank", "_pos"], kind="stable")
        return result.drop(columns=["_rank", "_pos"]).reset_index(drop=True)


def extract_many(
    selection: pd.DataFrame | Iterable[str] | Iterable[tuple[str, Any, Any]],
    roi: RoiSource | Mapping[str, RoiSource] | None = None,
    settings: Settings | None = None,
    client: Any = None,
    *,
    catalog: Any = None,
    labels: Mapping[int, str] | None = None,
    spacing: Sequence[float] | None = None,
    level: int = 0,
    save_to: Any = None,
    resume: bool = True,
    progress: bool = True,
    retries: int = 1,
    on_case: Callable[[Finished], None] | None = None,
) -> pd.DataFrame:
    """IBSI features of many (series, ROI) cases, one Dask task each.

    Parameters
    ----------
    selection
        Rows of ``Catalog.series()`` or volume UIDs (give ``catalog=``; a UID the catalog
        does not have is a failed case), or ``(name, volume, mask)`` tuples of arrays (numpy,
        dask, or DataArrays from :func:`voxelhub.open_series`).
    roi
        The ROI of every series: a callable ``volume -> mask`` (e.g. a threshold, run on the
        worker), a mask or label array, :class:`StoredLabels` (a label image stored with each
        catalog volume), or a dict ``{roi_name: any of these}`` for several ROIs per series.
        For tuples it defaults to each tuple's mask.
    settings
        Processing and families, as for :func:`extract`.
    client
        A ``distributed.Client``; default the current one (``distributed.get_client()``).
        Without any client the cases run here, one after another.
    catalog
        The :class:`voxelhub.Catalog` the selection came from; workers open the volumes from
        its store.
    labels
        ``{label value: ROI name}``: the masks are label volumes and each value is one ROI.
    spacing
        ``(dz, dy, dx)`` for numpy inputs (DataArrays carry their own).
    level
        Pyramid level of catalog volumes to read (0 = full resolution). ROI names of a
        coarser level end in ``@level<n>``, so their rows are never stored or resumed as
        full-resolution ones.
    save_to
        Store rows as each case finishes (a Catalog, an SQLAlchemy URL or Engine;
        :class:`voxelhub.features.results.ResultStore`), or, on the hub, the data service's
        catalog (``voxelhub.open_catalog()`` there): the service stores them for analysts and
        curators of each volume's project (a viewer's save is refused).
    resume
        With ``save_to``: skip cases already stored without error for these settings, and
        return their stored rows.
    progress
        Show a progress bar.
    retries
        Extra attempts for a task whose worker failed (a worker that dies is also
        rescheduled by Dask itself); tasks are pure, so a retry gives the same rows.
    on_case
        Called with each :class:`Finished` case as it ends (resumed ones first).

    Returns
    -------
    pandas.DataFrame
        Tidy rows: ``series``, ``roi``, ``feature``, ``family``, ``value``, ``ibsi_tag``,
        ``settings_hash``, ``error`` (``None``, or the message of a failed case, whose single
        row has no feature). Sorted by series, ROI and feature order, so two runs compare
        equal.
    """
    from tqdm.auto import tqdm

    everything = cases(selection, roi, catalog=catalog, labels=labels, spacing=spacing, level=level)
    run = CohortRun(everything, settings, client, save_to=save_to, resume=resume, retries=retries)
    bar = tqdm(total=len(run.todo), desc="radiomics", unit="case", disable=not progress)
    try:
        for done in run:
            if not done.stored:
                bar.update()
            if on_case is not None:
                on_case(done)
    finally:
        bar.close()
    return run.table()
