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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from voxelhub.features.extract import extract
from voxelhub.features.results import COLUMNS, ResultStore
from voxelhub.features.settings import Settings

__all__ = ["Case", "extract_many"]

log = logging.getLogger(__name__)

RoiSource = Any
"""A mask or label array (numpy, dask or DataArray), or a callable ``volume -> mask``."""


@dataclass(frozen=True)
class _StoredVolume:
    """Where a catalog volume lives; opened lazily on the worker, never on the client."""

    store_url: str
    storage_options: Mapping[str, Any]
    store_path: str

    def open(self) -> Any:
        from voxelhub.store.location import open_location
        from voxelhub.store.volume import open_volume

        return open_volume(
            open_location(self.store_url, dict(self.storage_options)), self.store_path
        )


@dataclass(frozen=True)
class Case:
    """One unit of work: a volume, one ROI of it, and the names the result rows carry.

    ``volume`` is an array (numpy, dask or DataArray) or a catalog reference opened on the
    worker; ``roi`` a mask, a label volume (with ``label``) or a callable ``volume -> mask``.
    Wrapping the arrays in this object keeps Dask from computing lazy inputs on the client:
    the task receives the lazy array and reads only what its ROI needs.
    """

    series: str
    roi_name: str
    volume: Any
    roi: RoiSource
    label: int | None = None
    spacing: tuple[float, float, float] | None = None

    def run(self, settings: Settings) -> pd.DataFrame:
        """The tidy feature rows of this case, or one row with the error (never raises)."""
        import dask

        try:
            # one task is one thread's work; its chunk reads stay in this thread
            with dask.config.set(scheduler="synchronous"):
                volume = (
                    self.volume.open() if isinstance(self.volume, _StoredVolume) else self.volume
                )
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


def cases(
    selection: pd.DataFrame | Iterable[tuple[str, Any, Any]],
    roi: RoiSource | Mapping[str, RoiSource] | None = None,
    *,
    catalog: Any = None,
    labels: Mapping[int, str] | None = None,
    spacing: Sequence[float] | None = None,
) -> list[Case]:
    """The (series, ROI) cases of a selection; see :func:`extract_many`."""
    sp = None if spacing is None else (float(spacing[0]), float(spacing[1]), float(spacing[2]))
    out: list[Case] = []
    if isinstance(selection, pd.DataFrame):
        if catalog is None:
            raise ValueError(
                "a catalog selection needs catalog=: pass the Catalog its rows came from"
            )
        if roi is None:
            raise ValueError("catalog rows carry no ROI: pass roi= (a callable, mask or dict)")
        if "volume_uid" not in selection or "store_path" not in selection:
            raise ValueError(
                "the selection must be rows of Catalog.series() (volume_uid, store_path)"
            )
        loc = catalog.location
        for row in selection.itertuples(index=False):
            ref = _StoredVolume(loc.url, dict(loc.storage_options), str(row.store_path))
            for name, src, value in _rois(roi, labels):
                out.append(Case(str(row.volume_uid), name, ref, src, value, sp))
        return out
    for item in selection:
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


def extract_many(
    selection: pd.DataFrame | Iterable[tuple[str, Any, Any]],
    roi: RoiSource | Mapping[str, RoiSource] | None = None,
    settings: Settings | None = None,
    client: Any = None,
    *,
    catalog: Any = None,
    labels: Mapping[int, str] | None = None,
    spacing: Sequence[float] | None = None,
    save_to: Any = None,
    resume: bool = True,
    progress: bool = True,
    retries: int = 1,
) -> pd.DataFrame:
    """IBSI features of many (series, ROI) cases, one Dask task each.

    Parameters
    ----------
    selection
        Rows of ``Catalog.series()`` (give ``catalog=``), or ``(name, volume, mask)`` tuples
        of arrays (numpy, dask, or DataArrays from :func:`voxelhub.open_series`).
    roi
        The ROI of every series: a callable ``volume -> mask`` (e.g. a threshold, run on the
        worker), a mask or label array, or a dict ``{roi_name: any of these}`` for several
        ROIs per series. For tuples it defaults to each tuple's mask.
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
    save_to
        Store rows as each case finishes (a Catalog, an SQLAlchemy URL or Engine;
        :class:`voxelhub.features.results.ResultStore`).
    resume
        With ``save_to``: skip cases already stored without error for these settings, and
        return their stored rows.
    progress
        Show a progress bar.
    retries
        Extra attempts for a task whose worker failed (a worker that dies is also
        rescheduled by Dask itself); tasks are pure, so a retry gives the same rows.

    Returns
    -------
    pandas.DataFrame
        Tidy rows: ``series``, ``roi``, ``feature``, ``family``, ``value``, ``ibsi_tag``,
        ``settings_hash``, ``error`` (``None``, or the message of a failed case, whose single
        row has no feature). Sorted by series, ROI and feature order, so two runs compare
        equal.
    """
    from tqdm.auto import tqdm

    settings = settings or Settings()
    everything = cases(selection, roi, catalog=catalog, labels=labels, spacing=spacing)
    order = {(c.series, c.roi_name): i for i, c in enumerate(everything)}
    todo = everything
    store = ResultStore(save_to) if save_to is not None else None
    parts: list[pd.DataFrame] = []
    if store is not None and resume:
        done = store.done(settings)
        if done:
            kept = [c for c in todo if (c.series, c.roi_name) not in done]
            log.info("resuming: %d of %d cases already stored", len(todo) - len(kept), len(todo))
            previous = store.load(settings, series=sorted({s for s, _ in done}))
            wanted = {(c.series, c.roi_name) for c in todo} & done
            parts.append(
                previous[
                    [(s, r) in wanted for s, r in zip(previous.series, previous.roi, strict=True)]
                ]
            )
            todo = kept

    def finished(table: pd.DataFrame) -> None:
        parts.append(table)
        if store is not None:
            store.save(table, settings)

    bar = tqdm(total=len(todo), desc="radiomics", unit="case", disable=not progress)
    client = client if client is not None else _current_client()
    try:
        if client is None:
            for case in todo:
                finished(case.run(settings))
                bar.update()
        else:
            _run_on_cluster(client, todo, settings, retries, finished, bar)
    finally:
        bar.close()
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    result = pd.concat([p for p in parts if not p.empty] or parts, ignore_index=True)
    rank = [order.get((s, r), len(order)) for s, r in zip(result.series, result.roi, strict=True)]
    result = result.assign(_rank=rank, _pos=np.arange(len(result)))
    result = result.sort_values(["_rank", "_pos"], kind="stable").drop(columns=["_rank", "_pos"])
    return result.reset_index(drop=True)


def _run_on_cluster(
    client: Any,
    todo: list[Case],
    settings: Settings,
    retries: int,
    finished: Callable[[pd.DataFrame], None],
    bar: Any,
) -> None:
    """Submit one task per case and collect them as they complete."""
    from dask.base import tokenize
    from distributed import as_completed

    text = settings.to_json()
    futures = {}
    for case in todo:
        key = f"radiomics-{case.series}-{case.roi_name}-{tokenize(case, text)}"
        fut = client.submit(_run_case, case, text, key=key, retries=retries)
        futures[fut] = case
    for fut in as_completed(list(futures)):
        case = futures[fut]
        try:
            table = fut.result()
        except Exception as exc:  # e.g. KilledWorker: the task failed on every attempt
            table = error_rows(case.series, case.roi_name, settings, f"{type(exc).__name__}: {exc}")
        finished(table)
        bar.update()
        fut.release()
