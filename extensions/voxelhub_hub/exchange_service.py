"""nbgrader's exchange as a hub service: every user identified by their hub token.

nbgrader's stock exchange is one world-writable folder where a submission is whoever its folder
name says it is (on Kubernetes, whatever ``$JUPYTERHUB_USER`` says).  This service replaces it:
it runs as its own system account (``voxelhub-exchange``), keeps everything in a folder only that
account may open (0700), and decides each request from the caller's hub token and hub groups:

- course ``C``'s students are the members of hub group ``C:students``, its instructors those of
  ``C:instructors`` (the grader account is one); ``voxelhub course create`` makes both;
- instructors release, replace and withdraw assignments, collect every submission and release
  feedback; students list and fetch released assignments, submit under their own name only
  (the name and the time are the service's, whatever the upload says) and fetch only their own
  feedback.  Nobody else gets anything, and every refusal is logged (``refused user=… action=…``).

The client side is :mod:`voxelhub.nbgrader_exchange`, nbgrader's pluggable ``Exchange`` classes,
so nbgrader's Assignments and Formgrader screens work unchanged.  Uploads and downloads are
gzipped tar files; uploads may hold only plain files and folders with relative names (no links,
no ``..``), at most :data:`MAX_UPLOAD` bytes unpacked.

API below ``$JUPYTERHUB_SERVICE_PREFIX`` (``/services/voxelhub-exchange/``)::

    GET    api/health                            liveness, no authentication
    GET    api/courses                           {"courses": {course: "instructor"|"student"}}
    GET    api/outbound/<c>[/<a>]                released assignments (members of c)
    PUT    api/outbound/<c>/<a>[?force=1]        release (instructors)
    DELETE api/outbound/<c>/<a>                  withdraw (instructors)
    POST   api/inbound/<c>/<a>                   submit as yourself (students of c)
    GET    api/inbound/<c>[?assignment=a]        every submission (instructors)
    PUT    api/feedback/<c>/<a>/<student>        feedback files <hash>.html (instructors)
    GET    api/feedback/<c>[?assignment=a]       your own feedback (students)
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import logging
import os
import re
import shutil
import tarfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jupyterhub.services.auth import HubAuth
from tornado import httpclient, web
from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop

log = logging.getLogger("voxelhub.exchange")

#: the most an upload may unpack to, and how many entries it may hold
MAX_UPLOAD = 200 * 2**20
MAX_ENTRIES = 2000
COURSE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,23}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
#: nbgrader's default ``Exchange.timestamp_format`` (UTC)
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S.%f %Z"
MEMBERSHIP_SECONDS = 5.0


def course_roles(groups: list[str]) -> dict[str, str]:
    """``{course: "instructor"|"student"}`` from hub group names (``C:students``,
    ``C:instructors``); instructor wins."""
    roles: dict[str, str] = {}
    for group in groups:
        course, _, kind = group.rpartition(":")
        if not COURSE_RE.match(course):
            continue
        if kind == "instructors":
            roles[course] = "instructor"
        elif kind == "students":
            roles.setdefault(course, "student")
    return roles


def pack(folder: Path, arcname: str = ".") -> bytes:
    """A gzipped tar of ``folder`` (plain files and folders only)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        if folder.is_dir():
            tar.add(folder, arcname=arcname, filter=_plain)
    return buf.getvalue()


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    if not (info.isfile() or info.isdir()):
        return None
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


class UploadError(ValueError):
    pass


def unpack(data: bytes, dest: Path) -> list[str]:
    """Unpack a client's tar into the new folder ``dest``, refusing anything but plain files and
    folders with clean relative names; return the files written."""
    written: list[str] = []
    total = 0
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")  # noqa: SIM115 - closed below
    except (tarfile.TarError, OSError) as exc:
        raise UploadError(f"not a tar file: {exc}") from None
    dest.mkdir(mode=0o700)
    with tar:
        members = tar.getmembers()
        if len(members) > MAX_ENTRIES:
            raise UploadError(f"more than {MAX_ENTRIES} entries")
        for m in members:
            parts = [p for p in m.name.split("/") if p not in ("", ".")]
            if not parts:
                continue
            if m.name.startswith("/") or any(p == ".." or "\\" in p or "\0" in p for p in parts):
                raise UploadError(f"bad name {m.name!r}")
            target = dest.joinpath(*parts)
            if m.isdir():
                target.mkdir(mode=0o700, parents=True, exist_ok=True)
                continue
            if not m.isfile():
                raise UploadError(f"{m.name!r} is not a plain file")
            total += m.size
            if total > MAX_UPLOAD:
                raise UploadError(f"more than {MAX_UPLOAD} bytes")
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            source = tar.extractfile(m)
            assert source is not None
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(source, out)
            written.append("/".join(parts))
    return written


class Exchange:
    """The exchange's folder and what each caller may do there."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)

    def course(self, course: str) -> Path:
        return self.root / course


class BaseHandler(web.RequestHandler):
    user: str
    roles: dict[str, str]

    @property
    def exchange(self) -> Exchange:
        return self.settings["exchange"]  # type: ignore[no-any-return]

    @property
    def hub_auth(self) -> HubAuth:
        return self.settings["hub_auth"]  # type: ignore[no-any-return]

    def check_xsrf_cookie(self) -> None:  # tokens only: no cookies are accepted at all
        return

    async def prepare(self) -> None:  # type: ignore[override]
        self.user = ""
        header = self.request.headers.get("Authorization", "")
        token = header.split(None, 1)[1] if header.lower().startswith(("token ", "bearer ")) else ""
        model = None
        if token:
            try:
                model = await self.hub_auth.user_for_token(token, sync=False)
            except Exception as exc:  # the hub is down …
                log.warning("token check failed: %s", exc)
        if not model or model.get("kind", "user") != "user":
            self.refuse("auth", "no valid hub token", status=401)
        self.user = str(model["name"])
        if not self.hub_auth.check_scopes(self.hub_auth.access_scopes, model):
            self.refuse("auth", "the token may not use this service")
        self.roles = course_roles(await self.groups(self.user))

    async def groups(self, name: str) -> list[str]:
        cache: dict[str, tuple[float, list[str]]] = self.settings.setdefault("groups", {})
        hit = cache.get(name)
        if hit and time.monotonic() - hit[0] < MEMBERSHIP_SECONDS:
            return hit[1]
        url = f"{self.hub_auth.api_url.rstrip('/')}/users/{quote(name)}"
        response = await httpclient.AsyncHTTPClient().fetch(
            url, headers={"Authorization": f"token {self.hub_auth.api_token}"}, request_timeout=10
        )
        groups = list(json.loads(response.body).get("groups", []))
        cache[name] = (time.monotonic(), groups)
        return groups

    def refuse(self, action: str, reason: str, status: int = 403) -> None:
        log.warning(
            "refused user=%s action=%s path=%s reason=%s",
            self.user or "-",
            action,
            self.request.path[:200],
            reason,
        )
        raise web.HTTPError(status, reason)

    def require(self, course: str, role: str, action: str) -> None:
        if not COURSE_RE.match(course):
            self.refuse(action, "bad course name", status=400)
        have = self.roles.get(course)
        if have is None:
            self.refuse(action, f"not in course {course}")
        if role == "instructor" and have != "instructor":
            self.refuse(action, f"only instructors of {course} may do this")

    def check_name(self, name: str, action: str) -> None:
        if not NAME_RE.match(name) or name in (".", ".."):
            self.refuse(action, f"bad name {name!r}", status=400)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": self._reason}))

    def send_tar(self, data: bytes) -> None:
        self.set_header("Content-Type", "application/gzip")
        self.finish(data)

    def allowed(self, action: str, **what: Any) -> None:
        log.info("allowed user=%s action=%s %s", self.user, action, json.dumps(what))


class HealthHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish({"ok": True})


class CoursesHandler(BaseHandler):
    def get(self) -> None:
        self.finish({"user": self.user, "courses": self.roles})


class OutboundHandler(BaseHandler):
    def get(self, course: str, assignment: str | None = None) -> None:
        self.require(course, "student", "outbound.read")
        outbound = self.exchange.course(course) / "outbound"
        if assignment is not None:
            self.check_name(assignment, "outbound.read")
            if not (outbound / assignment).is_dir():
                raise web.HTTPError(404, f"no assignment {assignment} released in {course}")
            self.allowed("outbound.read", course=course, assignment=assignment)
            return self.send_tar(pack(outbound / assignment))
        self.allowed("outbound.read", course=course)
        self.send_tar(pack(outbound))

    def put(self, course: str, assignment: str | None = None) -> None:
        self.require(course, "instructor", "outbound.release")
        if assignment is None:
            raise web.HTTPError(405)
        self.check_name(assignment, "outbound.release")
        outbound = self.exchange.course(course) / "outbound"
        outbound.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = outbound / assignment
        if target.exists() and self.get_argument("force", "0") != "1":
            raise web.HTTPError(409, f"{assignment} is already released in {course} (force it)")
        staging = outbound / f".{assignment}.{os.urandom(6).hex()}"
        try:
            files = unpack(self.request.body, staging)
        except UploadError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self.refuse("outbound.release", str(exc), status=400)
        if target.exists():
            shutil.rmtree(target)
        os.rename(staging, target)
        self.allowed("outbound.release", course=course, assignment=assignment, files=len(files))
        self.finish({"released": assignment, "files": files})

    def delete(self, course: str, assignment: str | None = None) -> None:
        self.require(course, "instructor", "outbound.withdraw")
        if assignment is None:
            raise web.HTTPError(405)
        self.check_name(assignment, "outbound.withdraw")
        target = self.exchange.course(course) / "outbound" / assignment
        if not target.is_dir():
            raise web.HTTPError(404, f"no assignment {assignment} released in {course}")
        shutil.rmtree(target)
        self.allowed("outbound.withdraw", course=course, assignment=assignment)
        self.finish({"withdrawn": assignment})


class InboundHandler(BaseHandler):
    def post(self, course: str, assignment: str | None = None) -> None:
        self.require(course, "student", "inbound.submit")
        if assignment is None:
            raise web.HTTPError(405)
        self.check_name(assignment, "inbound.submit")
        if self.roles[course] != "student":
            self.refuse("inbound.submit", "instructors do not submit")
        if not (self.exchange.course(course) / "outbound" / assignment).is_dir():
            self.refuse("inbound.submit", f"{assignment} is not released in {course}", 404)
        inbound = self.exchange.course(course) / "inbound"
        inbound.mkdir(mode=0o700, parents=True, exist_ok=True)
        stamp = datetime.datetime.now(datetime.UTC).strftime(TIMESTAMP_FORMAT)
        suffix = base64.urlsafe_b64encode(os.urandom(9)).decode()
        name = f"{self.user}+{assignment}+{stamp}+{suffix}"
        try:
            files = unpack(self.request.body, inbound / name)
        except UploadError as exc:
            shutil.rmtree(inbound / name, ignore_errors=True)
            self.refuse("inbound.submit", str(exc), status=400)
        # the time is the service's: whatever the upload claimed is replaced
        (inbound / name / "timestamp.txt").unlink(missing_ok=True)
        (inbound / name / "timestamp.txt").write_text(stamp)
        self.allowed("inbound.submit", course=course, assignment=assignment, files=len(files))
        self.finish({"submitted": assignment, "student": self.user, "timestamp": stamp})

    def get(self, course: str, assignment: str | None = None) -> None:
        self.require(course, "instructor", "inbound.collect")
        if assignment is not None:
            raise web.HTTPError(405)
        wanted = self.get_argument("assignment", "")
        if wanted:
            self.check_name(wanted, "inbound.collect")
        inbound = self.exchange.course(course) / "inbound"
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for entry in sorted(inbound.iterdir()) if inbound.is_dir() else []:
                if wanted and entry.name.split("+")[1:2] != [wanted]:
                    continue
                tar.add(entry, arcname=entry.name, filter=_plain)
        self.allowed("inbound.collect", course=course, assignment=wanted)
        self.send_tar(buf.getvalue())


class FeedbackHandler(BaseHandler):
    def put(self, course: str, assignment: str = "", student: str = "") -> None:
        self.require(course, "instructor", "feedback.release")
        if not (assignment and student):
            raise web.HTTPError(405)
        self.check_name(assignment, "feedback.release")
        self.check_name(student, "feedback.release")
        folder = self.exchange.course(course) / "feedback" / student / assignment
        folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        staging = folder.with_name(f".{assignment}.{os.urandom(6).hex()}")
        try:
            files = unpack(self.request.body, staging)
        except UploadError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            self.refuse("feedback.release", str(exc), status=400)
        if any("/" in f or not re.match(r"^[0-9a-f]{16,128}\.html$", f) for f in files):
            shutil.rmtree(staging, ignore_errors=True)
            self.refuse("feedback.release", "feedback is <hash>.html files only", status=400)
        if folder.exists():  # keep what was released before (earlier submissions' feedback)
            for f in files:
                os.replace(staging / f, folder / f)
            shutil.rmtree(staging)
        else:
            os.rename(staging, folder)
        self.allowed("feedback.release", course=course, assignment=assignment, student=student)
        self.finish({"released": len(files)})

    def get(self, course: str, assignment: str = "", student: str = "") -> None:
        self.require(course, "student", "feedback.fetch")
        if assignment or student:
            raise web.HTTPError(405)
        wanted = self.get_argument("assignment", "")
        if wanted:
            self.check_name(wanted, "feedback.fetch")
        mine = self.exchange.course(course) / "feedback" / self.user
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for folder in sorted(mine.iterdir()) if mine.is_dir() else []:
                if wanted and folder.name != wanted:
                    continue
                for html in sorted(folder.glob("*.html")):
                    tar.add(html, arcname=html.name, filter=_plain)
        self.allowed("feedback.fetch", course=course, assignment=wanted)
        self.send_tar(buf.getvalue())


class NotFoundHandler(BaseHandler):
    def prepare(self) -> None:  # type: ignore[override]
        raise web.HTTPError(404, "no such endpoint")


def make_app(root: str, prefix: str, hub_auth: HubAuth) -> web.Application:
    p = "/" + prefix.strip("/") + "/"
    c, a = r"([^/]+)", r"([^/]+)"
    return web.Application(
        [
            (p + "api/health", HealthHandler),
            (p + "api/courses", CoursesHandler),
            (p + f"api/outbound/{c}(?:/{a})?", OutboundHandler),
            (p + f"api/inbound/{c}(?:/{a})?", InboundHandler),
            (p + f"api/feedback/{c}(?:/{a}/{a})?", FeedbackHandler),
            (p + ".*", NotFoundHandler),
        ],
        exchange=Exchange(root),
        hub_auth=hub_auth,
        serve_traceback=False,
    )


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="the exchange's folder (this account's, 0700)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s voxelhub-exchange %(message)s")
    from urllib.parse import urlparse

    hub_auth = HubAuth(
        api_token=os.environ.get("JUPYTERHUB_API_TOKEN", ""),
        cache_max_age=int(MEMBERSHIP_SECONDS),
    )
    prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/services/voxelhub-exchange/")
    url = urlparse(os.environ.get("JUPYTERHUB_SERVICE_URL", "http://127.0.0.1:8030"))
    server = HTTPServer(make_app(args.root, prefix, hub_auth), max_body_size=MAX_UPLOAD)
    server.listen(url.port or 80, url.hostname or "127.0.0.1")
    log.info("exchange in %s at %s%s", args.root, url.geturl(), prefix)
    IOLoop.current().start()


if __name__ == "__main__":
    main()
