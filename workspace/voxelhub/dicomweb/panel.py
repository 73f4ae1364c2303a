"""PullPanel: ``voxelhub pull`` from a notebook, with a query form, progress and the report.

::

    from voxelhub.dicomweb import pull_panel
    pull_panel("store/", project="trial", url="https://pacs.example.org/dicom-web")

"Find" runs the QIDO-RS query and says how many studies and instances it selects; "Pull"
retrieves them in a background thread (the notebook stays responsive) with a progress bar, then
shows the pull's summary, or the error in one line.  The password field is never shown back;
without one the credentials come from the environment as for the command line.
"""

from __future__ import annotations

import html
import os
import threading
from typing import Any

import ipywidgets as w

from voxelhub.dicomweb.errors import PullError
from voxelhub.dicomweb.pull import PullReport, pull
from voxelhub.dicomweb.query import StudyQuery, StudySummary
from voxelhub.dicomweb.server import Credentials
from voxelhub.dicomweb.service_pull import find
from voxelhub.errors import VoxelHubError


class PullPanel(w.VBox):
    """A form over :func:`voxelhub.dicomweb.pull`; ``report`` holds the last pull's report."""

    def __init__(
        self,
        store: str | os.PathLike[str],
        *,
        project: str = "default",
        url: str = "",
        workers: int = 4,
        staging: str | os.PathLike[str] | None = None,
        catalog_url: str | None = None,
    ) -> None:
        self.store, self.staging, self.catalog_url = store, staging, catalog_url
        style = {"description_width": "110px"}
        self.url = w.Text(value=url, description="DICOMweb URL", style=style)
        self.patient_id = w.Text(description="Patient ID", style=style)
        self.study_date = w.Text(description="Study date", placeholder="YYYYMMDD-YYYYMMDD",
                                 style=style)  # fmt: skip
        self.modality = w.Text(description="Modality", style=style)
        self.accession = w.Text(description="Accession", style=style)
        self.study_uid = w.Text(description="Study UID", style=style)
        self.project = w.Text(value=project, description="Project", style=style)
        self.user = w.Text(description="User", style=style)
        self.password = w.Password(description="Password", style=style)
        self.workers = w.BoundedIntText(value=workers, min=1, max=32, description="Streams",
                                        style=style)  # fmt: skip
        self.find_button = w.Button(description="Find", icon="search")
        self.pull_button = w.Button(description="Pull", icon="download", button_style="primary")
        self.progress = w.IntProgress(value=0, min=0, max=1, description="Instances")
        self.status = w.HTML()
        self.report: PullReport | None = None
        self.error = ""
        self.thread: threading.Thread | None = None
        self.find_button.on_click(lambda _: self.find())
        self.pull_button.on_click(lambda _: self.start())
        super().__init__(
            [
                self.url,
                w.HBox([w.VBox([self.patient_id, self.study_date, self.modality]),
                        w.VBox([self.accession, self.study_uid, self.project])]),
                w.HBox([self.user, self.password, self.workers]),
                w.HBox([self.find_button, self.pull_button]),
                self.progress,
                self.status,
            ]
        )  # fmt: skip

    def query(self) -> StudyQuery:
        return StudyQuery(
            patient_id=self.patient_id.value.strip() or None,
            study_date=self.study_date.value.strip() or None,
            modality=self.modality.value.strip() or None,
            accession=self.accession.value.strip() or None,
            study_uid=self.study_uid.value.strip() or None,
        )

    def credentials(self) -> Credentials:
        return Credentials.resolve(
            user=self.user.value.strip() or None, password=self.password.value or None
        )

    def _say(self, text: str, *, error: bool = False) -> None:
        color = "#b00020" if error else "inherit"
        body = html.escape(text).replace("\n", "<br>")
        self.status.value = f"<div style='color:{color};font-family:monospace'>{body}</div>"

    def find(self) -> list[StudySummary] | None:
        """The QIDO-RS query alone: which studies and how many instances a pull would bring
        (asked by the data service when the store is its URL)."""
        try:
            studies, instances = find(self.url.value.strip(), self.store, self.query(),
                                      project=self.project.value.strip() or "default",
                                      credentials=self.credentials(),
                                      count_instances=True)  # fmt: skip
        except VoxelHubError as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self._say(self.error, error=True)
            return None
        lines = [study.line() for study in studies]
        self._say("\n".join([*lines, f"{len(studies)} study(ies), {instances} instance(s)"]))
        return studies

    def start(self) -> threading.Thread:
        """Pull in a background thread; the buttons are off until it ends."""
        self.report, self.error = None, ""
        self.find_button.disabled = self.pull_button.disabled = True
        self.progress.value, self.progress.max = 0, 1
        self._say("querying…")
        self.thread = threading.Thread(target=self._run, name="voxelhub-pull", daemon=True)
        self.thread.start()
        return self.thread

    def _progress(self, done: int, total: int) -> None:
        self.progress.max = max(total, 1)
        self.progress.value = done

    def _run(self) -> None:
        try:
            self.report = pull(
                self.url.value.strip(),
                self.store,
                self.query(),
                project=self.project.value.strip() or "default",
                credentials=self.credentials(),
                workers=int(self.workers.value),
                staging=self.staging,
                catalog_url=self.catalog_url,
                progress=False,
                on_progress=self._progress,
            )
            self._say(self.report.summary(), error=self.report.exit_code == 2)
        except (PullError, VoxelHubError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self._say(self.error, error=True)
        except Exception as exc:  # a widget thread must end with a message, never silently
            self.error = f"unexpected {type(exc).__name__}: {exc}"
            self._say(self.error, error=True)
        finally:
            self.find_button.disabled = self.pull_button.disabled = False


def pull_panel(store: str | os.PathLike[str], **kwargs: Any) -> PullPanel:
    """A :class:`PullPanel` for ``store`` (keyword arguments: project, url, workers…)."""
    return PullPanel(store, **kwargs)
