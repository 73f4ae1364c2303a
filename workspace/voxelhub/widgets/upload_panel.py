"""UploadPanel: a curator sends a zip of DICOM files to the data service from a notebook.

::

    from voxelhub.widgets import upload_panel
    upload_panel()          # the hub's catalog ($VOXELHUB_STORE), your curator projects

Choose a zip, pick one of the projects you curate, press Upload: the zip goes to the data
service (:meth:`voxelhub.service_catalog.ServiceCatalog.upload`), which checks and ingests it;
a background thread follows its state with a progress bar and shows the report: the volumes
written and every file rejected with the reason.
"""

from __future__ import annotations

import html
import threading
from typing import Any

import ipywidgets as w
import traitlets

from voxelhub.errors import VoxelHubError
from voxelhub.uploads import UploadReport, UploadState


class UploadPanel(w.VBox):
    """A file chooser, the caller's curator projects, Upload, progress and the report."""

    state = traitlets.Unicode("idle", help="idle, sending, or the upload's state").tag(sync=True)
    error = traitlets.Unicode("", help="the last failure in one line, empty when none")

    def __init__(self, catalog: Any = None) -> None:
        if catalog is None:
            import voxelhub

            catalog = voxelhub.open_catalog()
        if not hasattr(catalog, "upload"):
            raise VoxelHubError(
                "uploads go through the data service: open the hub's catalog "
                "(voxelhub.open_catalog() in a hub kernel), not a local store"
            )
        self.catalog = catalog
        roles = catalog.whoami().get("projects", {})
        curated = sorted(p for p, role in roles.items() if role == "curator")
        self.file = w.FileUpload(accept=".zip", multiple=False, description="Zip")
        self.project = w.Dropdown(options=curated, description="Project")
        self.upload_button = w.Button(
            description="Upload", icon="upload", button_style="primary", disabled=not curated
        )
        self.progress = w.IntProgress(value=0, min=0, max=1, description="Files")
        self.status = w.HTML()
        self.table = w.HTML()
        self.report: UploadReport | None = None
        self.thread: threading.Thread | None = None
        self.upload_button.on_click(lambda _: self.start())
        super().__init__(
            [
                w.HBox([self.file, self.project, self.upload_button]),
                self.progress,
                self.status,
                self.table,
            ]
        )
        self.add_class("voxelhub-upload")
        if not curated:
            self._say("you are a curator of no project: nothing to upload into", error=True)

    def _say(self, text: str, *, error: bool = False) -> None:
        color = "#b00020" if error else "inherit"
        body = html.escape(text).replace("\n", "<br>")
        self.status.value = (
            f"<div class='voxelhub-upload-status' style='color:{color};font-family:monospace'>"
            f"{body}</div>"
        )

    def start(self) -> threading.Thread | None:
        """Send the chosen zip in a background thread; the button is off until it ends."""
        if not self.file.value:
            self.error = "choose a zip file first"
            self._say(self.error, error=True)
            return None
        chosen = self.file.value[0]
        body = bytes(chosen["content"])
        project = str(self.project.value)
        self.report, self.error, self.state = None, "", "sending"
        self.upload_button.disabled = True
        self.progress.value, self.progress.max = 0, 1
        self.table.value = ""
        self._say(f"sending {chosen['name']} ({len(body)} bytes) to {project}…")
        self.thread = threading.Thread(
            target=self._run, args=(body, project), name="voxelhub-upload", daemon=True
        )
        self.thread.start()
        return self.thread

    def _progress(self, report: UploadReport) -> None:
        self.state = report.state.value
        self.progress.max = max(report.files, 1)
        self.progress.value = report.checked
        self._say(f"upload {report.id}: {report.state.value}, {report.checked} of "
                  f"{report.files} file(s) checked")  # fmt: skip

    def _run(self, body: bytes, project: str) -> None:
        try:
            self.report = self.catalog.upload(body, project=project, on_progress=self._progress)
            self.state = self.report.state.value
            self._say(self.report.summary(), error=self.report.state is UploadState.FAILED)
            self.table.value = report_table(self.report)
        except VoxelHubError as exc:
            self.error, self.state = f"{type(exc).__name__}: {exc}", "failed"
            self._say(self.error, error=True)
        except Exception as exc:  # a widget thread must end with a message, never silently
            self.error, self.state = f"unexpected {type(exc).__name__}: {exc}", "failed"
            self._say(self.error, error=True)
        finally:
            self.upload_button.disabled = False


def report_table(report: UploadReport) -> str:
    """The report as an HTML table: one row per volume written, one per file rejected."""
    rows = [("volume", uid, "written") for uid in report.volumes]
    rows += [("volume", uid, "unchanged") for uid in report.unchanged]
    rows += [("file", r["file"], r["reason"]) for r in report.rejected]
    cells = "".join(
        f"<tr><td>{html.escape(kind)}</td><td>{html.escape(name)}</td>"
        f"<td>{html.escape(outcome)}</td></tr>"
        for kind, name, outcome in rows
    )
    return (
        "<table class='voxelhub-upload-report'><tr><th>what</th><th>name</th><th>outcome</th>"
        f"</tr>{cells}</table>"
    )
