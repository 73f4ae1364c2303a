"""StudyBrowser: search the catalog, page through its series, see flags and thumbnails, open one.

Filtering and paging happen in SQL (``Catalog.series(text=, modality=, flag=, limit=,
after=)``: keyset paging by the ``next_cursor`` each page returns, so a deep page costs what
the first does), and the kernel and the browser only ever hold one page, whatever the
catalog's size.  Thumbnails are the middle slice of each series' smallest pyramid level, never read from
full resolution, and are cached per volume.
"""

from __future__ import annotations

import html
import logging
from typing import Any

import ipywidgets as w
import numpy as np

from voxelhub.errors import VoxelHubError
from voxelhub.widgets.table import Table, png_uri

log = logging.getLogger(__name__)

MODALITIES = ("CT", "MR", "PT", "NM", "US", "CR", "DX", "MG", "XA", "RF", "OT")
FLAGS = (
    "gantry_tilt",
    "non_uniform_spacing",
    "missing_slices",
    "mixed_orientation",
    "no_geometry",
    "no_slice_spacing",
    "no_pixel_spacing",
)
COLUMNS = [
    {"key": "patient_id", "label": "patient"},
    {"key": "study_date", "label": "date"},
    {"key": "modality", "label": "mod."},
    {"key": "body_part", "label": "body part"},
    {"key": "series_number", "label": "#", "kind": "number"},
    {"key": "description", "label": "description"},
    {"key": "size", "label": "size"},
    {"key": "flags", "label": "flags", "kind": "flags"},
]


def _json_value(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v]
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


class StudyBrowser(w.HBox):
    """A paged, filterable table of series with thumbnails; the selected series opens beside it.

    Parameters
    ----------
    catalog
        A :class:`voxelhub.Catalog` (``voxelhub.open_catalog(store)``).
    page_size
        Series per page (one SQL query per page).
    thumbnails
        Draw the thumbnail strip (one read of the smallest pyramid level per series shown).
    viewer
        ``"slices"`` opens :func:`~voxelhub.widgets.view`; ``None`` opens nothing (the selection
        is still in :attr:`selected`).
    """

    def __init__(
        self,
        catalog: Any,
        *,
        page_size: int = 20,
        thumbnails: bool = True,
        viewer: str | None = "slices",
        **kwargs: Any,
    ) -> None:
        self.catalog = catalog
        self.page_size = int(page_size)
        self.show_thumbnails = thumbnails
        self.viewer_kind = viewer
        self.page = 0
        self._after: dict[int, str | None] = {0: None}
        """The ``after=`` cursor of each page reached so far (the filters' current ones)."""
        self.rows: list[dict[str, Any]] = []
        self.viewer: Any = None
        self._thumb_cache: dict[str, str] = {}
        self.search = w.Text(placeholder="search descriptions…", continuous_update=False)
        self.modality = w.Dropdown(options=[("any modality", ""), *[(m, m) for m in MODALITIES]])
        self.flag = w.Dropdown(options=[("any flags", ""), *[(f, f) for f in FLAGS]])
        self.prev_button = w.Button(
            description="◀", tooltip="previous page", layout={"width": "36px"}
        )
        self.next_button = w.Button(description="▶", tooltip="next page", layout={"width": "36px"})
        self.page_label = w.Label()
        self.table = Table(columns=COLUMNS, key="volume_uid", empty_text="no series match")
        self.details = w.HTML()
        self.viewer_box = w.VBox(layout={"min_width": "300px"})
        for control in (self.search, self.modality, self.flag):
            control.layout.width = "auto"
            control.observe(self._filters_changed, names="value")
        self.prev_button.on_click(lambda _b: self.go(self.page - 1))
        self.next_button.on_click(lambda _b: self.go(self.page + 1))
        self.table.observe(self._selected, names="selected")
        left = w.VBox(
            [
                w.HBox([self.search, self.modality, self.flag]),
                w.HBox([self.prev_button, self.page_label, self.next_button]),
                self.table,
                self.details,
            ],
            layout={"width": "50%", "min_width": "420px"},
        )
        super().__init__([left, self.viewer_box], **kwargs)
        self.add_class("voxelhub-browser")
        self.refresh()

    # -- paging and filtering ---------------------------------------------------------------
    @property
    def selected(self) -> str:
        """The selected volume UID ('' when none)."""
        return str(self.table.selected)

    def select(self, volume_uid: str) -> None:
        """Select a series (as a click on its row does) and open it in the viewer."""
        self.table.selected = volume_uid

    def filters(self) -> dict[str, Any]:
        """The current filters as ``Catalog.series`` keyword arguments."""
        return {
            "text": self.search.value.strip() or None,
            "modality": self.modality.value or None,
            "flag": self.flag.value or None,
        }

    def _filters_changed(self, _change: Any) -> None:
        self.page = 0
        self._after = {0: None}  # cursors belong to one set of filters
        self.refresh()

    def go(self, page: int) -> None:
        """Show page ``page`` (0-based) of the filtered series."""
        self.page = max(0, int(page))
        self.refresh()

    def _query(self, page: int) -> Any:
        """Page ``page`` of the filtered series: after the cursor the previous page returned
        (keyset paging, as fast at row 50,000 as at row 0), or, for a page not reached page by
        page (:meth:`go` far ahead), one query by offset; either way the page's
        ``next_cursor`` is kept for the page after it."""
        if page in self._after:
            frame = self.catalog.series(
                **self.filters(), limit=self.page_size, after=self._after[page]
            )
        else:
            frame = self.catalog.series(
                **self.filters(), limit=self.page_size, offset=page * self.page_size
            )
        cursor = frame.attrs.get("next_cursor")
        if cursor:
            self._after[page + 1] = str(cursor)
        return frame

    def refresh(self) -> None:
        """Query one page and draw it (the page's cursor says whether there is a next one)."""
        frame = self._query(self.page)
        if frame.empty and self.page > 0:  # past the end: on to the last page by cursors
            page = max(p for p in self._after if p < self.page)
            frame = self._query(page)
            while frame.attrs.get("next_cursor") and page + 1 < self.page:
                page += 1
                frame = self._query(page)
            self.page = page
            if frame.empty and page > 0:  # rows were deleted meanwhile: start again
                self._after = {0: None}
                self.page = 0
                self.refresh()
                return
        has_next = bool(frame.attrs.get("next_cursor"))
        self.rows = [{str(k): v for k, v in r.items()} for r in frame.to_dict("records")]
        table_rows = []
        for row in self.rows:
            out = {c["key"]: _json_value(row.get(c["key"])) for c in COLUMNS}
            out["size"] = f"{row['slices']}×{row['rows']}×{row['columns']}"
            out["volume_uid"] = row["volume_uid"]
            out["reasons"] = row.get("reasons") or ""
            table_rows.append(out)
        first = self.page * self.page_size
        self.page_label.value = (
            f"series {first + 1}–{first + len(self.rows)}" if self.rows else "no series"
        ) + f" · page {self.page + 1}"
        self.prev_button.disabled = self.page == 0
        self.next_button.disabled = not has_next
        self.table.rows = table_rows
        self.table.thumbnails = self._thumbnails() if self.show_thumbnails else []

    # -- thumbnails -------------------------------------------------------------------------
    def _thumbnails(self) -> list[dict[str, Any]]:
        out = []
        for row in self.rows:
            uid = row["volume_uid"]
            if uid not in self._thumb_cache:
                self._thumb_cache[uid] = self._thumbnail(row)
            label = f"{row.get('modality', '')} {row.get('series_number') or ''}".strip()
            out.append({"key": uid, "src": self._thumb_cache[uid], "label": label})
        return out

    def _thumbnail(self, row: dict[str, Any]) -> str:
        """PNG of the middle slice of the smallest pyramid level ('' if it cannot be read): made
        by the catalog (on the hub, by the data service in one request)."""
        try:
            return png_uri(self.catalog.thumbnail(row))
        except (OSError, ValueError, KeyError, VoxelHubError) as err:
            log.debug("no thumbnail for %s: %s", row.get("volume_uid"), err)
            return ""

    # -- selection --------------------------------------------------------------------------
    def _selected(self, change: dict[str, Any]) -> None:
        uid = change["new"]
        row = next((r for r in self.rows if r["volume_uid"] == uid), None)
        if row is None:
            try:
                row = self.catalog.volume_row(uid)
            except VoxelHubError as err:
                self.details.value = f"<b>{html.escape(str(err))}</b>"
                return
        reasons = html.escape(row.get("reasons") or "")
        self.details.value = (
            f"<div class='vh-details'><b>{html.escape(str(row.get('description') or uid))}</b>"
            f" · {html.escape(str(row.get('modality', '')))} · {row['slices']}×{row['rows']}×"
            f"{row['columns']} · spacing {row['spacing_z']:.3g}×{row['spacing_y']:.3g}×"
            f"{row['spacing_x']:.3g} mm"
            + (f"<br><span class='vh-flag'>flags</span> {reasons}" if reasons else "")
            + "</div>"
        )
        if self.viewer_kind is None:
            return
        from voxelhub import open_series
        from voxelhub.widgets.slices import SliceViewer

        try:
            volume = open_series(row, catalog=self.catalog)
            self.viewer = SliceViewer.from_volume(volume, catalog=self.catalog)
        except (VoxelHubError, OSError, ValueError) as err:
            self.viewer = None
            self.viewer_box.children = [
                w.HTML(f"<b>cannot open {html.escape(uid)}:</b> {html.escape(str(err))}")
            ]
            return
        self.viewer_box.children = [self.viewer]
