"""ArrivalsPanel: a project's curators follow what PACSes sent to the DICOM edge.

::

    from voxelhub.widgets import arrivals_panel
    arrivals_panel(project="lung", auto_refresh=5)   # the hub's catalog ($VOXELHUB_STORE)

One row per study received: when, from which AE title and host, its state (receiving,
ingesting, ingested, partial, failed, refused), instances, volumes written and instances
rejected; selecting a row shows every rejected instance with its reason.  Refresh asks the data
service again (``GET api/arrivals``, curators only, audited); ``auto_refresh`` does it every few
seconds while studies are still on their way.
"""

from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as w
import traitlets

from voxelhub.arrivals import Arrival
from voxelhub.errors import VoxelHubError
from voxelhub.widgets.table import Table

COLUMNS = [
    {"key": "id", "label": "#", "kind": "number"},
    {"key": "received_at", "label": "received", "kind": "text"},
    {"key": "caller", "label": "from", "kind": "text"},
    {"key": "state", "label": "state", "kind": "text"},
    {"key": "instances", "label": "instances", "kind": "number"},
    {"key": "volumes", "label": "volumes", "kind": "number"},
    {"key": "rejected", "label": "rejected", "kind": "number"},
]


class ArrivalsPanel(w.VBox):
    """The arrivals of one project, newest first, with the reasons for every rejection."""

    project = traitlets.Unicode(help="the project whose arrivals are listed").tag(sync=True)
    error = traitlets.Unicode("", help="the last failure in one line, empty when none")
    auto_refresh = traitlets.Float(
        0.0, help="seconds between refreshes while an arrival is unfinished (0: by hand only)"
    )

    def __init__(self, catalog: Any = None, project: str = "", *, auto_refresh: float = 0.0):
        if catalog is None:
            import voxelhub

            catalog = voxelhub.open_catalog()
        if not hasattr(catalog, "arrivals"):
            raise VoxelHubError(
                "arrivals are listed by the data service: open the hub's catalog "
                "(voxelhub.open_catalog() in a hub kernel)"
            )
        self.catalog = catalog
        self.arrivals: list[Arrival] = []
        self.table = Table(columns=COLUMNS, key="id", empty_text="nothing received yet")
        self.details = w.HTML()
        self.status = w.HTML()
        self.refresh_button = w.Button(description="Refresh", icon="refresh")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.table.observe(lambda _: self._show_details(), "selected")
        self._timer: threading.Timer | None = None
        super().__init__(
            [w.HBox([self.refresh_button, self.status]), self.table, self.details],
            project=project,
            auto_refresh=auto_refresh,
        )
        self.refresh()

    def refresh(self) -> list[Arrival]:
        """Ask the data service again; a refusal (not a curator) is shown, not raised."""
        try:
            self.arrivals = self.catalog.arrivals(self.project)
            self.error = ""
        except (VoxelHubError, OSError) as exc:
            self.arrivals, self.error = [], str(exc).splitlines()[0]
        self.table.rows = [_row(a) for a in self.arrivals]
        busy = sum(not a.state.finished for a in self.arrivals)
        self.status.value = (
            f"<span style='color:#b00'>{html.escape(self.error)}</span>"
            if self.error
            else f"{len(self.arrivals)} arrival(s), {busy} on their way"
        )
        self._show_details()
        if busy and self.auto_refresh > 0:
            self._timer = threading.Timer(self.auto_refresh, self.refresh)
            self._timer.daemon = True
            self._timer.start()
        return self.arrivals

    def _show_details(self) -> None:
        chosen = next((a for a in self.arrivals if str(a.id) == self.table.selected), None)
        if chosen is None:
            self.details.value = ""
            return
        lines = [f"<b>{html.escape(chosen.state.value)}</b> {html.escape(chosen.message)}"]
        lines += [
            f"{html.escape(str(r.get('instance', '')))}: {html.escape(str(r.get('reason', '')))}"
            for r in chosen.rejected
        ]
        self.details.value = "<br>".join(lines)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().close()


def _row(arrival: Arrival) -> dict[str, Any]:
    return {
        "id": arrival.id,
        "received_at": arrival.received_at,
        "caller": f"{arrival.calling_aet} ({arrival.calling_host})",
        "state": arrival.state.value,
        "instances": arrival.instances,
        "volumes": len(arrival.volumes),
        "rejected": len(arrival.rejected),
    }
