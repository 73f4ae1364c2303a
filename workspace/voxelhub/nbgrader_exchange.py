"""nbgrader's ``Exchange`` classes for VoxelHub's exchange service (the hub, not a shared folder).

Set in ``hub_config/jupyter/nbgrader_config.py`` for every server on the hub, so nbgrader's
command line, its Assignments screen and Formgrader use the service with the server's hub token
(``$JUPYTERHUB_API_TOKEN``) at ``$VOXELHUB_EXCHANGE_URL``.  Each operation runs nbgrader's own
filesystem implementation against a private, temporary mirror of the part of the exchange the
caller may see (inside their 0700 home), then sends what it wrote to the service: nbgrader's
behaviour in the course and assignment folders is unchanged, and the service alone decides who
may read or write what (``voxelhub_hub.exchange_service``).
"""

from __future__ import annotations

import glob
import io
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from nbgrader.exchange.abc import ExchangeError
from nbgrader.exchange.default import collect as _collect
from nbgrader.exchange.default import exchange as _exchange
from nbgrader.exchange.default import fetch_assignment as _fetch_assignment
from nbgrader.exchange.default import fetch_feedback as _fetch_feedback
from nbgrader.exchange.default import list as _list
from nbgrader.exchange.default import release_assignment as _release_assignment
from nbgrader.exchange.default import release_feedback as _release_feedback
from nbgrader.exchange.default import submit as _submit
from nbgrader.utils import notebook_hash


class ServiceClient:
    """HTTP calls to the exchange service with this server's hub token."""

    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = (url or os.environ.get("VOXELHUB_EXCHANGE_URL", "")).rstrip("/")
        self.token = token or os.environ.get("JUPYTERHUB_API_TOKEN", "")
        if not self.url or not self.token:
            raise ExchangeError(
                "no exchange: $VOXELHUB_EXCHANGE_URL and $JUPYTERHUB_API_TOKEN are set on the hub"
            )

    def call(self, method: str, path: str, body: bytes | None = None, ok404: bool = False) -> Any:
        req = urllib.request.Request(
            f"{self.url}/api/{path}",
            data=body,
            method=method,
            headers={"Authorization": f"token {self.token}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.read()
        except urllib.error.HTTPError as exc:
            if ok404 and exc.code == 404:
                return None
            try:
                import json

                message = json.loads(exc.read()).get("message", "")
            except ValueError:
                message = ""
            raise ExchangeError(f"exchange: {method} {path}: {exc.code} {message}") from None
        except urllib.error.URLError as exc:
            raise ExchangeError(f"exchange unreachable at {self.url}: {exc.reason}") from None

    def courses(self) -> dict[str, str]:
        import json

        return dict(json.loads(self.call("GET", "courses"))["courses"])

    def get_tree(self, path: str, dest: Path, ok404: bool = False) -> bool:
        """GET a tar from the service and unpack it (plain files and folders) into ``dest``."""
        data = self.call("GET", path, ok404=ok404)
        if data is None:
            return False
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for m in tar.getmembers():
                parts = [p for p in m.name.split("/") if p not in ("", ".")]
                if not parts or any(p == ".." for p in parts) or m.name.startswith("/"):
                    continue
                target = dest.joinpath(*parts)
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(m)
                    assert source is not None
                    with open(target, "wb") as out:
                        shutil.copyfileobj(source, out)
        return True

    def send_tree(self, method: str, path: str, folder: Path) -> Any:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            tar.add(folder, arcname=".", filter=lambda i: i if i.isfile() or i.isdir() else None)
        import json

        return json.loads(self.call(method, path, buf.getvalue()))


class _Mirrored:
    """Run nbgrader's filesystem exchange against a private temporary mirror of the service."""

    client: ServiceClient
    root: str
    coursedir: Any

    def pull(self) -> None:
        """Fetch what the operation reads into ``self.root``."""

    def push(self) -> None:
        """Send what the operation wrote in ``self.root``."""

    def start(self) -> Any:
        self.client = ServiceClient()
        scratch = Path(jupyter_data_dir()) / "nbgrader_exchange"
        scratch.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(scratch, 0o700)
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            self.root = tmp
            self.pull()
            result = super().start()  # type: ignore[misc]
            self.push()
            return result

    def mirror(self, *parts: str) -> Path:
        return Path(self.root, self.coursedir.course_id, *parts)

    def need_course(self) -> str:
        course = str(self.coursedir.course_id)
        if not course:
            raise ExchangeError("No course id specified. Re-run with --course flag.")
        return course


class Exchange(_exchange.Exchange):
    """The base class nbgrader instantiates for shared settings."""


class ExchangeReleaseAssignment(_Mirrored, _release_assignment.ExchangeReleaseAssignment):
    def ensure_root(self) -> None:  # the mirror is private: no 0777 folder
        os.makedirs(self.root, exist_ok=True)

    def push(self) -> None:
        course, assignment = self.need_course(), self.coursedir.assignment_id
        force = "?force=1" if self.force else ""
        folder = self.mirror("outbound", assignment)
        self.client.send_tree("PUT", f"outbound/{course}/{assignment}{force}", folder)


class ExchangeFetchAssignment(_Mirrored, _fetch_assignment.ExchangeFetchAssignment):
    def pull(self) -> None:
        course, assignment = self.need_course(), self.coursedir.assignment_id
        self.client.get_tree(
            f"outbound/{course}/{assignment}", self.mirror("outbound", assignment), ok404=True
        )


class ExchangeSubmit(_Mirrored, _submit.ExchangeSubmit):
    def pull(self) -> None:
        course, assignment = self.need_course(), self.coursedir.assignment_id
        self.client.get_tree(
            f"outbound/{course}/{assignment}", self.mirror("outbound", assignment), ok404=True
        )
        self.mirror("inbound").mkdir(parents=True, exist_ok=True)

    def push(self) -> None:
        course, assignment = self.need_course(), self.coursedir.assignment_id
        (submitted,) = self.mirror("inbound").iterdir()
        self.client.send_tree("POST", f"inbound/{course}/{assignment}", submitted)


class ExchangeCollect(_Mirrored, _collect.ExchangeCollect):
    def pull(self) -> None:
        # the service names each submission after the token that sent it: no owner to check
        self.check_owner = False
        course = self.need_course()
        query = (
            f"?assignment={self.coursedir.assignment_id}" if self.coursedir.assignment_id else ""
        )
        self.client.get_tree(f"inbound/{course}{query}", self.mirror("inbound"))


class ExchangeReleaseFeedback(_Mirrored, _release_feedback.ExchangeReleaseFeedback):
    def copy_files(self) -> None:
        """nbgrader's loop, but each student's files go to the service under that student."""
        course, assignment = self.need_course(), self.coursedir.assignment_id
        exclude = set(filter(None, (self.coursedir.student_id_exclude or "").split(",")))
        pattern = self.coursedir.format_path(
            self.coursedir.feedback_directory, "(?P<student_id>[^/]*)", assignment, escape=True
        )
        by_student: dict[str, list[tuple[str, str]]] = {}
        for name in sorted(glob.glob(os.path.join(self.src_path, "*.html"))):
            html = Path(name)
            m = re.match(pattern + re.escape(os.sep) + r"(?P<notebook_id>.*)\.html$", name)
            if m is None or m["student_id"] in exclude:
                continue
            secret = (html.parent / "submission_secret.txt").read_text()
            checksum = notebook_hash(secret=secret, notebook_id=m["notebook_id"])
            by_student.setdefault(m["student_id"], []).append((str(html), checksum))
        for student, files in by_student.items():
            with tempfile.TemporaryDirectory(dir=self.root) as tmp:
                for source, checksum in files:
                    shutil.copy(source, Path(tmp, f"{checksum}.html"))
                self.client.send_tree("PUT", f"feedback/{course}/{assignment}/{student}", Path(tmp))
            self.log.info("Released feedback for %s on %s/%s", student, course, assignment)


class ExchangeFetchFeedback(_Mirrored, _fetch_feedback.ExchangeFetchFeedback):
    def pull(self) -> None:
        course = self.need_course()
        query = (
            f"?assignment={self.coursedir.assignment_id}" if self.coursedir.assignment_id else ""
        )
        self.client.get_tree(f"feedback/{course}{query}", self.mirror("feedback"))


class ExchangeList(_Mirrored, _list.ExchangeList):
    def pull(self) -> None:
        courses = self.client.courses()
        wanted = self.coursedir.course_id
        for course, role in courses.items():
            if wanted and course != wanted:
                continue
            base = Path(self.root, course)
            self.client.get_tree(f"outbound/{course}", base / "outbound")
            if self.inbound and role == "instructor":
                self.client.get_tree(f"inbound/{course}", base / "inbound")
            if role == "student":
                self.client.get_tree(f"feedback/{course}", base / "feedback")

    def remove_files(self) -> Any:
        if self.coursedir.course_id and not self.cached and not self.inbound:
            # an instructor withdrawing a released assignment: at the service
            for assignment in self.assignments:
                name = os.path.basename(assignment)
                self.client.call("DELETE", f"outbound/{self.coursedir.course_id}/{name}")
        return super().remove_files()
