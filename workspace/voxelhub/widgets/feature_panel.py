"""FeaturePanel: radiomics on a set of series, with progress, cancel, per-case errors and export.

The panel is a front end to the cohort engine of :func:`voxelhub.features.extract_many`
(:class:`voxelhub.features.cohort.CohortRun`): each selected series is one case, read at the
chosen pyramid level, its ROI an intensity threshold or a label image stored with the volume
(:class:`~voxelhub.features.cohort.StoredLabels`).  The engine runs the cases on the Dask client
the caller passes (``voxelhub.compute.client()``: Gateway on the hub, LocalCluster elsewhere) or
the current ``distributed`` client, one task per case with retries, or one after the other
without a client; the panel iterates it in a background thread, so the notebook stays
responsive, the progress bar and table follow the cases as they finish, and the cancel button
works.  A failing case is one error row and never hides the others.  Finished cases are stored
(in memory for this panel by default, or in ``save_to``), so pressing Run again after a
cancelled or partly failed run computes only what is missing.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import threading
import time
from collections.abc import Sequence
from functools import partial
from typing import Any

import ipywidgets as w
import numpy as np
import pandas as pd

from voxelhub.features import FAMILIES, Discretisation, Settings
from voxelhub.features.cohort import Case, CohortRun, StoredLabels, cases
from voxelhub.widgets.svgplot import scatter_svg
from voxelhub.widgets.table import Table

log = logging.getLogger(__name__)

DEFAULT_FAMILIES = ("intensity_statistics", "intensity_histogram", "glcm")
RESULT_COLUMNS = ["volume_uid", "roi", "feature", "family", "value", "ibsi_tag", "settings_hash"]
REDRAW_SECONDS = 1.0
"""Least time between two redraws of the table while a run goes on."""


def _memory_results() -> Any:
    """A private in-memory database for the panel's finished cases (what Run resumes from)."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    return create_engine(
        "sqlite://", poolclass=StaticPool, connect_args={"check_same_thread": False}
    )


def _set_options(dropdown: w.Dropdown, options: list[str], default: int) -> None:
    """New options, keeping the user's choice when it is still there."""
    keep = dropdown.value
    if list(dropdown.options) != options:
        dropdown.options = options
    if keep in options:
        dropdown.value = keep
    else:
        dropdown.value = options[min(default, len(options) - 1)] if options else None


class FeaturePanel(w.VBox):
    """Pick series, ROI and settings; run; sort, export and plot the results.

    Parameters
    ----------
    catalog
        A :class:`voxelhub.Catalog`.
    series
        Volume UIDs to preselect (e.g. ``StudyBrowser.selected`` or a ``Catalog.series`` query).
    client
        A ``distributed.Client``; default the current default client if there is one, else a
        local background thread.
    save_to
        Where finished cases are stored, so that Run computes only the cases not stored yet
        for the same ROI, level and settings: a :class:`voxelhub.Catalog`, an SQLAlchemy URL
        or Engine (:class:`voxelhub.features.ResultStore`).  Default: a private in-memory
        database that lives as long as the panel.
    """

    def __init__(
        self,
        catalog: Any,
        *,
        series: Sequence[str] = (),
        client: Any = None,
        save_to: Any = None,
        **kwargs: Any,
    ) -> None:
        self.catalog = catalog
        self.client = client
        self.save_to = save_to if save_to is not None else _memory_results()
        self.results = pd.DataFrame(columns=RESULT_COLUMNS)
        """Tidy results of the last run: one row per (series, feature)."""
        self.errors = pd.DataFrame(columns=["volume_uid", "error"])
        """One row per failed case, with the error message."""
        self.last_run: CohortRun | None = None
        """The engine of the current or last run (which cases were resumed, computed, …)."""
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._ending = False
        self._status_lock = threading.Lock()
        self._descriptions: dict[str, str] = {}

        self.query = w.Text(placeholder="filter series…", continuous_update=False)
        self.modality = w.Dropdown(options=[("any", ""), ("CT", "CT"), ("MR", "MR"), ("PT", "PT")])
        self.series = w.SelectMultiple(rows=6, layout={"width": "98%"})
        self.query.observe(lambda _c: self.find(), names="value")
        self.modality.observe(lambda _c: self.find(), names="value")
        self.roi = w.Dropdown(
            options=[("intensity threshold", "threshold"), ("stored label", "label")],
            description="ROI",
        )
        self.label = w.Text(
            placeholder="label name", description="label", layout={"width": "220px"}
        )
        self.label_value = w.BoundedIntText(
            value=0,
            min=0,
            max=2**31 - 1,
            description="value",
            layout={"width": "160px"},
            tooltip="label value that is the ROI; 0 = every labelled voxel",
        )
        self.lower = w.FloatText(value=-200.0, description="from", layout={"width": "160px"})
        self.upper = w.FloatText(value=3000.0, description="to", layout={"width": "160px"})
        self.level = w.BoundedIntText(
            value=2,
            min=0,
            max=10,
            description="level",
            layout={"width": "160px"},
            tooltip="pyramid level: 0 = full resolution; coarser levels are much faster",
        )
        self.families = w.SelectMultiple(
            options=list(FAMILIES), value=list(DEFAULT_FAMILIES), rows=6, description="families"
        )
        self.bin_method = w.Dropdown(
            options=[("fixed bin number", "fbn"), ("fixed bin size", "fbs")],
            value="fbn",
            description="bins",
        )
        self.bin_number = w.BoundedIntText(value=32, min=2, max=4096, description="number")
        self.bin_width = w.BoundedFloatText(value=25.0, min=1e-6, max=1e9, description="width")
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.cancel_button = w.Button(description="Cancel", icon="stop", disabled=True)
        self.progress = w.IntProgress(value=0, min=0, max=1, layout={"width": "240px"})
        self.status = w.Label("")
        self.error_box = w.HTML()
        self.table = Table(key="volume_uid", sortable=True, empty_text="no results yet")
        self.table_family = w.Dropdown(description="columns")
        self.plot_x = w.Dropdown(description="x")
        self.plot_y = w.Dropdown(description="y")
        self.plot = w.HTML()
        self.export_path = w.Text(value="features.csv", description="export to")
        self.csv_button = w.Button(description="CSV", icon="download")
        self.parquet_button = w.Button(description="Parquet", icon="download")
        self.export_status = w.HTML()

        self.run_button.on_click(lambda _b: self.run())
        self.cancel_button.on_click(lambda _b: self.cancel())
        self.csv_button.on_click(lambda _b: self._export_clicked("csv"))
        self.parquet_button.on_click(lambda _b: self._export_clicked("parquet"))
        self.table.observe(self._resort, names=["sort_by", "ascending"])
        self.table_family.observe(lambda _c: self._draw_table(), names="value")
        self.plot_x.observe(lambda _c: self._draw_plot(), names="value")
        self.plot_y.observe(lambda _c: self._draw_plot(), names="value")

        super().__init__(
            [
                w.HTML("<b>Series</b>"),
                w.HBox([self.query, self.modality]),
                self.series,
                w.HBox([self.roi, self.lower, self.upper, self.level]),
                w.HBox([self.label, self.label_value]),
                w.HBox([self.families, w.VBox([self.bin_method, self.bin_number, self.bin_width])]),
                w.HBox([self.run_button, self.cancel_button, self.progress, self.status]),
                self.error_box,
                self.table_family,
                self.table,
                w.HBox([self.export_path, self.csv_button, self.parquet_button]),
                self.export_status,
                w.HBox([self.plot_x, self.plot_y]),
                self.plot,
            ],
            **kwargs,
        )
        self.add_class("voxelhub-features")
        self.find(preselect=list(series))

    # -- inputs -----------------------------------------------------------------------------
    def find(self, preselect: Sequence[str] = ()) -> None:
        """Fill the series list from the catalog (SQL filter, first 500 matches)."""
        frame = self.catalog.series(
            text=self.query.value.strip() or None, modality=self.modality.value or None, limit=500
        )
        wanted = set(preselect) | set(self.series.value)
        extra = [u for u in preselect if u not in set(frame["volume_uid"])]
        if extra:
            frame = pd.concat([frame, *(self.catalog.series(uid=u) for u in extra)])
        options = []
        for row in frame.itertuples():
            label = f"{row.modality} {row.series_number or ''} {row.description or ''} · {row.patient_id} · {row.volume_uid[:8]}"
            options.append((" ".join(label.split()), row.volume_uid))
            self._descriptions[row.volume_uid] = str(row.description or row.volume_uid[:8])
        self.series.options = options
        self.series.value = tuple(u for _, u in options if u in wanted)

    def settings(self) -> Settings:
        """The :class:`~voxelhub.features.Settings` the controls describe."""
        if self.bin_method.value == "fbn":
            disc = Discretisation("fbn", bin_number=int(self.bin_number.value))
        else:
            disc = Discretisation("fbs", bin_width=float(self.bin_width.value))
        return Settings(
            discretisation=disc,
            ivh_discretisation=disc,
            families=tuple(self.families.value),
        )

    def roi_source(self) -> tuple[dict[str, Any], dict[int, str] | None]:
        """The ROI the controls describe, as ``roi=`` and ``labels=`` of ``extract_many``.

        The ROI name carries the threshold or label, so results of other ROIs are never
        resumed for this one (the engine adds the level).
        """
        if self.roi.value == "label":
            name = self.label.value.strip()
            value = int(self.label_value.value)
            if value:
                return {"label": StoredLabels(name)}, {value: f"label:{name}={value}"}
            return {f"label:{name}": StoredLabels(name)}, None
        from voxelhub.roi import threshold

        lower, upper = float(self.lower.value), float(self.upper.value)
        return {
            f"threshold[{lower!r},{upper!r}]": partial(threshold, lower=lower, upper=upper)
        }, None

    def cases(self) -> list[Case]:
        """One engine :class:`~voxelhub.features.cohort.Case` per selected series."""
        roi, labels = self.roi_source()
        return cases(
            list(self.series.value),
            roi,
            catalog=self.catalog,
            labels=labels,
            level=int(self.level.value),
        )

    # -- running ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self, *, wait: bool = False) -> None:
        """Start the extraction in the background; ``wait=True`` blocks until it ends."""
        if self.running:
            return
        n = len(self.series.value)
        if not n:
            self.status.value = "select at least one series"
            return
        self._cancel.clear()
        self._ending = False
        self.last_run = None
        self.progress.max, self.progress.value = n, 0
        self.progress.bar_style = ""
        self.run_button.disabled, self.cancel_button.disabled = True, False
        self.status.value = f"running 0/{n}…"
        self._thread = threading.Thread(target=self._work, args=(self.settings(),), daemon=True)
        self._thread.start()
        if wait:
            self._thread.join()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current run ends."""
        if self._thread is not None:
            self._thread.join(timeout)

    def cancel(self) -> None:
        """Start no further case, and cancel the pending tasks (Dask); finished cases stay."""
        with self._status_lock:  # never write "cancelling…" over the status of a finished run
            if not self.running or self._ending:
                return
            self.status.value = "cancelling…"
            self._cancel.set()
        run = self.last_run
        if run is not None:
            run.cancel()

    def _work(self, settings: Settings) -> None:
        start = time.perf_counter()
        failure = ""
        run: CohortRun | None = None
        try:
            run = CohortRun(self.cases(), settings, self.client, save_to=self.save_to)
            self.last_run = run
            if self._cancel.is_set():  # cancelled while the cases were being prepared
                run.cancel()
            failed = 0
            drawn = time.monotonic()
            for done in run:
                failed += done.failed
                self._progress(run, failed)
                if run.finished < len(run.cases) and time.monotonic() - drawn >= REDRAW_SECONDS:
                    self._publish(run.table())
                    drawn = time.monotonic()
        except Exception as err:  # the run itself could not go on (e.g. catalog unreachable)
            log.exception("feature run failed")
            failure = f"{type(err).__name__}: {err}"
        finally:
            self._finish(run, time.perf_counter() - start, failure)

    def _progress(self, run: CohortRun, failed: int) -> None:
        self.progress.value = run.finished
        reused = f", {len(run.done)} reused" if run.done else ""
        self.status.value = f"running {run.finished}/{len(run.cases)}… ({failed} failed{reused})"

    def _finish(self, run: CohortRun | None, seconds: float, failure: str) -> None:
        with self._status_lock:
            self._ending = True
        table = run.table() if run is not None else pd.DataFrame(columns=["error"])
        self._publish(table)
        n = len(run.cases) if run is not None else len(self.series.value)
        failed = len(self.errors)
        ok = (run.finished if run is not None else 0) - failed
        cancelled = self._cancel.is_set() and ok + failed < n
        reused = f" ({len(run.done)} reused)" if run is not None and run.done else ""
        self.status.value = (
            f"{'cancelled: ' if cancelled else ''}{ok} of {n} series done, {failed} failed "
            f"in {seconds:.1f} s{reused}"
        )
        if failure:
            self.status.value = f"run failed: {failure}"
        bad = failed or failure
        self.progress.bar_style = "danger" if bad else ("warning" if cancelled else "success")
        self.run_button.disabled, self.cancel_button.disabled = False, True

    def _publish(self, table: pd.DataFrame) -> None:
        """Show the engine's rows so far: results, errors, table, plot."""
        bad = table["error"].notna()
        self.results = (
            table.loc[~bad]
            .rename(columns={"series": "volume_uid"})
            .reindex(columns=RESULT_COLUMNS)
            .reset_index(drop=True)
        )
        self.errors = (
            table.loc[bad, ["series", "error"]]
            .rename(columns={"series": "volume_uid"})
            .reset_index(drop=True)
            if bad.any()
            else pd.DataFrame(columns=["volume_uid", "error"])
        )
        self.error_box.value = self._errors_html()
        present = set(self.results["family"])
        families = [f for f in (*FAMILIES, "diagnostics") if f in present]
        _set_options(self.table_family, families, 0)
        features = sorted(set(self.results.loc[self.results["family"] != "diagnostics", "feature"]))
        _set_options(self.plot_x, features, 0)
        _set_options(self.plot_y, features, 1)
        self._draw_table()
        self._draw_plot()

    def _errors_html(self) -> str:
        if self.errors.empty:
            return ""
        cells = []
        for rec in self.errors.to_dict("records"):
            uid, error = str(rec["volume_uid"]), str(rec["error"])
            name = self._descriptions.get(uid, uid)
            cells.append(
                f"<tr><td>{html.escape(name)}</td><td>{html.escape(uid)}</td>"
                f"<td>{html.escape(error)}</td></tr>"
            )
        rows = "".join(cells)
        return (
            "<div class='vh-errors'><b>failed cases</b><table class='vh-table'>"
            f"<tr><th>series</th><th>volume</th><th>error</th></tr>{rows}</table></div>"
        )

    # -- results ----------------------------------------------------------------------------
    def wide(self) -> pd.DataFrame:
        """One row per series, one column per feature."""
        if self.results.empty:
            return pd.DataFrame()
        table = self.results.pivot_table(
            index="volume_uid", columns="feature", values="value", aggfunc="first"
        )
        table.columns.name = None
        return table.reset_index()

    def _draw_table(self) -> None:
        wide = self.wide()
        if wide.empty:
            self.table.columns, self.table.rows = [], []
            return
        family = self.table_family.value
        names = sorted(set(self.results.loc[self.results["family"] == family, "feature"]))
        wide.insert(1, "series", [self._descriptions.get(u, u[:8]) for u in wide["volume_uid"]])
        by, asc = self.table.sort_by, self.table.ascending
        if by in wide.columns:
            wide = wide.sort_values(by, ascending=asc, kind="stable", na_position="last")
        columns = [{"key": "series", "label": "series"}] + [
            {"key": n, "label": n, "kind": "number"} for n in names
        ]
        rows = []
        for rec in wide[["volume_uid", "series", *names]].to_dict("records"):
            rows.append(
                {
                    str(k): (None if isinstance(v, float) and not np.isfinite(v) else v)
                    for k, v in rec.items()
                }
            )
        self.table.columns = columns
        self.table.rows = rows

    def _resort(self, _change: Any) -> None:
        self._draw_table()

    def _draw_plot(self) -> None:
        wide = self.wide()
        xf, yf = self.plot_x.value, self.plot_y.value
        if wide.empty or xf not in wide or yf not in wide:
            self.plot.value = ""
            return
        labels = [self._descriptions.get(u, u[:8]) for u in wide["volume_uid"]]
        self.plot.value = scatter_svg(wide[xf], wide[yf], labels, xlabel=xf, ylabel=yf)

    def export(self, path: str) -> str:
        """Write the tidy results to ``path`` (``.csv`` or ``.parquet``); return the path."""
        if path.endswith(".parquet"):
            self.results.to_parquet(path, index=False)
        elif path.endswith(".csv"):
            self.results.to_csv(path, index=False)
        else:
            raise ValueError(f"export to .csv or .parquet, not {path!r}")
        return path

    def _export_clicked(self, kind: str) -> None:
        path = self.export_path.value.strip() or f"features.{kind}"
        stem = path.rsplit(".", 1)[0] if path.endswith((".csv", ".parquet")) else path
        path = f"{stem}.{kind}"
        try:
            self.export(path)
        except (OSError, ValueError, ImportError) as err:
            self.export_status.value = f"<b>export failed:</b> {html.escape(str(err))}"
            return
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        self.export_status.value = (
            f"{len(self.results)} rows written to <code>{html.escape(path)}</code> at {stamp}"
        )
