"""A small selectable, sortable table with an optional thumbnail strip (anywidget).

ipywidgets has no table, and the grid widgets (ipydatagrid, …) bring their own JupyterLab
extension; this one is forty lines of ES module shipped in the package.  Rows are plain JSON
(the current page only, never the whole catalog); sorting is done by the Python owner when
``sort_by`` / ``ascending`` change, so a table can be backed by SQL.
"""

from __future__ import annotations

import base64
from typing import Any

import anywidget
import traitlets as t

from voxelhub.store.thumbnail import png_bytes
from voxelhub.widgets.slices import STATIC


class Table(anywidget.AnyWidget):
    """Rows of dicts; a click selects a row (``selected`` = its ``key`` column)."""

    _esm = STATIC / "table.js"
    _css = STATIC / "widgets.css"

    columns = t.List(t.Dict()).tag(sync=True)
    """``[{"key": …, "label": …, "kind": "text" | "number" | "flags"}]``; a ``flags`` cell is a
    list of codes shown as badges, with the row's ``reasons`` as their tooltip."""
    rows = t.List(t.Dict()).tag(sync=True)
    key = t.Unicode("id").tag(sync=True)
    selected = t.Unicode("").tag(sync=True)
    sortable = t.Bool(False).tag(sync=True)
    sort_by = t.Unicode("").tag(sync=True)
    ascending = t.Bool(True).tag(sync=True)
    thumbnails = t.List(t.Dict()).tag(sync=True)
    """``[{"key": …, "src": "data:image/png;base64,…", "label": …}]``, drawn above the table."""
    empty_text = t.Unicode("no rows").tag(sync=True)


def png_data_uri(image: Any) -> str:
    """A grey 8-bit PNG of a 2-D uint8 array, as a ``data:`` URI (no imaging library needed)."""
    return png_uri(png_bytes(image))


def png_uri(png: bytes) -> str:
    """PNG bytes as a ``data:`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
