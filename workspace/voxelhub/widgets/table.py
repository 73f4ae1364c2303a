"""A small selectable, sortable table with an optional thumbnail strip (anywidget).

ipywidgets has no table, and the grid widgets (ipydatagrid, …) bring their own JupyterLab
extension; this one is forty lines of ES module shipped in the package.  Rows are plain JSON
(the current page only, never the whole catalog); sorting is done by the Python owner when
``sort_by`` / ``ascending`` change, so a table can be backed by SQL.
"""

from __future__ import annotations

import base64
import struct
import zlib
from typing import Any

import anywidget
import numpy as np
import traitlets as t

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
    arr = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = arr.shape
    raw = b"".join(b"\x00" + arr[r].tobytes() for r in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
