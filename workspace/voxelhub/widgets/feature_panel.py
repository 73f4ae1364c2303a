"""FeaturePanel: radiomics on a set of series, with progress, cancel, per-case errors and export.

Each case (one series) is opened with :func:`voxelhub.open_series` at the chosen pyramid level,
its ROI made by an intensity threshold or read from a label image stored with the volume
(:func:`voxelhub.roi.read_labels`; labels exist at full resolution, so level 0), and :func:`voxelhub.features.extract` run on it; one
failing case is reported in the errors table and never hides the others.  Cases run on the
Dask client the caller passes (``voxelhub.compute.client()``: Gateway on the hub, LocalCluster
elsewhere) or on the default ``distributed`` client when one exists, as one task per case;
with no client they run one after the other in a background thread, so the notebook stays
responsive and the cancel button works.  ``features.extract_many`` (the cohort API on Dask) was
not there when this panel was written; per-case ``extract`` is what runs.
"""

from __future__ import annotations

import datetime as dt
import html
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import ipywidgets as w
import numpy as np
import pandas as pd

from voxelhub.features import FAMILIES, Discretisation, Settings, extract
from voxelhub.widgets.svgplot import scatter_svg
from voxelhub.widgets.table import Table

log = logging.getLogger(__name__)

DEFAULT_FAMILIES = ("intensity_statistics", "intensity_histogram", "glcm")


@dataclass(frozen=True)
class Case:
    """One unit of work: a series, its ROI threshold, the level and the settings."""

    volume_uid: str
    store: str
    catalog_url: str
    level: int
    lower: float
    upper: float
    settings_json: str
    label: str = ""
    """Name of a stored label image to use as the ROI instead of the threshold."""
    label_value: int = 0
    """Label value that is the ROI; 0 means every non-zero voxel."""


def run_case(case: Case) -> pd.DataFrame:
    """Features of one series (tidy), with ``volume_uid`` added; runs on a worker or locally."""
    from voxelhub import open_catalog, open_series

    catalog = open_catalog(case.store, catalog_url=case.catalog_url)
    try:
        if case.label and case.level != 0:
            raise ValueError(f"label {case.label!r} exists at full resolution only: set level to 0")
        volume = open_series(case.volume_uid, level=case.level, catalog=catalog)
        if case.label:
            from voxelhub.roi import read_labels

            labels = read_labels(catalog, case.volume_uid, case.label)
            mask = labels == case.label_value if case.label_value else labels > 0
        else:
            mask = (volume >= case.lower) & (volume <= case.upper)
        table = extract(volume, mask, Settings.from_json(case.settings_json))
    finally:
        catalog.close()
    table.insert(0, "volume_uid", case.volume_uid)
    return table


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
    """

    def __init__(
        self,
        catalog: Any,
        *,
        series: Sequence[str] = (),
        client: Any = None,
        **kwargs: Any,
    ) -> None:
        self.catalog = catalog
        self.client = client
        self.results = pd.DataFrame(columns=["volume_uid", "feature", "family", "value"])
        """Tidy results of the last run: one row per (series, feature)."""
        self.errors = pd.DataFrame(columns=["volume_uid", "error"])
        """One row per failed case, with the error message."""
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._futures: list[Any] = []
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

    def cases(self) -> list[Case]:
        """One :class:`Case` per selected series."""
        settings = self.settings().to_json()
        return [
            Case(
                volume_uid=uid,
                store=self.catalog.location.url,
                catalog_url=self.catalog.url,
                level=int(self.level.value),
                lower=float(self.lower.value),
                upper=float(self.upper.value),
                settings_json=settings,
                label=self.label.value.strip() if self.roi.value == "label" else "",
                label_value=int(self.label_value.value),
            )
            for uid in self.series.value
        ]

    # -- running ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self, *, wait: bool = False) -> None:
        """Start the extraction in the background; ``wait=True`` blocks until it ends."""
        if self.running:
            return
        cases = self.cases()
        if not cases:
            self.status.value = "select at least one series"
            return
        self._cancel.clear()
        self.progress.max, self.progress.value = len(cases), 0
        self.progress.bar_style = ""
        self.run_button.disabled, self.cancel_button.disabled = True, False
        self.status.value = f"running 0/{len(cases)}…"
        self._thread = threading.Thread(target=self._work, args=(cases,), daemon=True)
        self._thread.start()
        if wait:
            self._thread.join()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current run ends."""
        if self._thread is not None:
            self._thread.join(timeout)

    def cancel(self) -> None:
        """Stop after the case now running (local), or cancel the pending tasks (Dask)."""
        self._cancel.set()
        for future in self._futures:
            future.cancel()
        self.status.value = "cancelling…"

    def _client(self) -> Any:
        if self.client is not None:
            return self.client
        try:
            from distributed import default_client

            return default_client()
        except (ImportError, ValueError):
            return None

    def _work(self, cases: list[Case]) -> None:
        tables: list[pd.DataFrame] = []
        errors: list[dict[str, str]] = []
        start = time.perf_counter()
        done = 0

        def finished(case: Case, table: pd.DataFrame | None, error: BaseException | None) -> None:
            nonlocal done
            done += 1
            if table is not None:
                tables.append(table)
            if error is not None:
                errors.append(
                    {"volume_uid": case.volume_uid, "error": f"{type(error).__name__}: {error}"}
                )
                log.warning("features failed for %s: %s", case.volume_uid, error)
            self.progress.value = done
            self.status.value = f"running {done}/{len(cases)}… ({len(errors)} failed)"

        client = self._client()
        try:
            if client is not None:
                from distributed import as_completed

                self._futures = [client.submit(run_case, c, pure=False) for c in cases]
                by_future = dict(zip(self._futures, cases, strict=True))
                for future in as_completed(self._futures):
                    if self._cancel.is_set():
                        break
                    try:
                        finished(by_future[future], future.result(), None)
                    except Exception as err:  # one case failing never stops the others
                        finished(by_future[future], None, err)
            else:
                for case in cases:
                    if self._cancel.is_set():
                        break
                    try:
                        finished(case, run_case(case), None)
                    except Exception as err:  # one case failing never stops the others
                        finished(case, None, err)
        finally:
            self._futures = []
            self._finish(tables, errors, len(cases), time.perf_counter() - start)

    def _finish(
        self, tables: list[pd.DataFrame], errors: list[dict[str, str]], n: int, seconds: float
    ) -> None:
        self.results = (
            pd.concat(tables, ignore_index=True)
            if tables
            else pd.DataFrame(columns=["volume_uid", "feature", "family", "value"])
        )
        self.errors = pd.DataFrame(errors, columns=["volume_uid", "error"])
        ok = len(tables)
        cancelled = self._cancel.is_set() and ok + len(errors) < n
        self.status.value = (
            f"{'cancelled: ' if cancelled else ''}{ok} of {n} series done, {len(errors)} failed "
            f"in {seconds:.1f} s"
        )
        self.progress.bar_style = "danger" if errors else ("warning" if cancelled else "success")
        self.run_button.disabled, self.cancel_button.disabled = False, True
        self.error_box.value = self._errors_html()
        present = set(self.results["family"])
        families = [f for f in (*FAMILIES, "diagnostics") if f in present]
        self.table_family.options = families
        self.table_family.value = families[0] if families else None
        features = sorted(set(self.results.loc[self.results["family"] != "diagnostics", "feature"]))
        self.plot_x.options = features
        self.plot_y.options = features
        self.plot_x.value = features[0] if features else None
        self.plot_y.value = features[min(1, len(features) - 1)] if features else None
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
