"""Courses on the hub: hub groups for students and instructors, tied to a project's cohort.

``voxelhub course create NAME --instructor U [--roster roster.csv] --project P`` talks to the
hub's REST API with an admin's token and makes, or brings up to date:

- hub group ``NAME:students`` (the roster) and ``NAME:instructors``;
- a grader account ``grader-NAME``: a hub user nobody logs in as, in whose server nbgrader
  autogrades (student code never runs as an instructor or in the hub), a member of
  ``NAME:instructors`` so that it may collect and release feedback at the exchange;
- membership of group ``P`` for every student, instructor and the grader: ``P`` makes them
  *viewers* of project ``P`` at the data service (``voxelhub_data.access.roles_from_groups``),
  so the class reads the same de-identified cohort, read-only, without copying it.  The project
  must exist and be de-identified (``--identifiable`` overrides that for non-patient data);
- a share of the grader's server with every instructor (JupyterHub shares, scopes
  ``start:servers``, ``delete:servers`` and ``access:servers`` filtered to
  ``!server=grader-NAME/``): instructors start, stop and work in it (formgrader, ``nbgrader
  autograde``; ``voxelhub course grader NAME``) with their own login or token, and reach no
  student's server.  A share, not a role: roles cannot be made through the REST API, and
  ``!group=`` filters do not work for tokens at a single-user server.  The scopes are the
  specific ones: a share's scopes reach a token unexpanded, so ``servers`` would not imply
  ``start:servers`` (JupyterHub 6.1.1).

The course is recorded in the groups' properties (``{"course": NAME, "project": P, "grader":
...}``), where the exchange service and the admin UI see it.  Running ``create`` again with a
longer roster adds the new students; nobody is removed (``voxelhub course remove``).  The group
separator ``:`` is the data service's role separator; suffixes it does not know
(``students``, ``instructors``) grant nothing there.
"""

from __future__ import annotations

import csv
import json
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxelhub.errors import VoxelHubError

STUDENTS, INSTRUCTORS = "students", "instructors"
#: course names: what hub group names and unix user names (``grader-<name>``) both allow
COURSE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,23}$")


class CourseError(VoxelHubError):
    """The hub refused, or the course cannot be made as asked."""


def students_group(course: str) -> str:
    return f"{course}:{STUDENTS}"


def instructors_group(course: str) -> str:
    return f"{course}:{INSTRUCTORS}"


def grader_account(course: str) -> str:
    return f"grader-{course}"


def read_roster(path: str | os.PathLike[str]) -> list[str]:
    """User names from a roster CSV: the ``username`` column (or ``user``/``login``), else the
    first column of a file without a header.  Blank lines and ``#`` comments are skipped."""
    text = Path(path).read_text(encoding="utf-8-sig")
    rows = [r for r in csv.reader(text.splitlines()) if r and r[0].strip() and r[0][0] != "#"]
    if not rows:
        return []
    header = [h.strip().lower() for h in rows[0]]
    column = next((header.index(k) for k in ("username", "user", "login") if k in header), None)
    if column is not None:
        rows = rows[1:]
    names = [r[column or 0].strip() for r in rows if len(r) > (column or 0)]
    return list(dict.fromkeys(n for n in names if n))


@dataclass
class Hub:
    """The hub's REST API with one token (``url`` = the public URL, without ``/hub/api``)."""

    url: str
    token: str
    cafile: str | None = None
    calls: list[str] = field(default_factory=list)

    def request(self, method: str, path: str, body: Any = None, ok: Iterable[int] = ()) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url.rstrip("/") + "/hub/api" + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        context = ssl.create_default_context(cafile=self.cafile) if self.cafile else None
        self.calls.append(f"{method} {path}")
        try:
            with urllib.request.urlopen(req, timeout=60, context=context) as r:
                raw = r.read()
        except urllib.error.HTTPError as exc:
            if exc.code in set(ok):
                return None
            detail = exc.read().decode(errors="replace")[:300]
            raise CourseError(f"{method} /hub/api{path}: {exc.code} {detail}") from None
        except urllib.error.URLError as exc:
            raise CourseError(f"cannot reach the hub at {self.url}: {exc.reason}") from None
        return json.loads(raw) if raw else None

    def get(self, url: str) -> Any:
        """GET a full URL (a hub service) with the same token."""
        req = urllib.request.Request(url, headers={"Authorization": f"token {self.token}"})
        context = ssl.create_default_context(cafile=self.cafile) if self.cafile else None
        try:
            with urllib.request.urlopen(req, timeout=60, context=context) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:300]
            raise CourseError(f"GET {url}: {exc.code} {detail}") from None
        except urllib.error.URLError as exc:
            raise CourseError(f"cannot reach {url}: {exc.reason}") from None


def _project(hub: Hub, project: str, data_url: str) -> dict[str, Any]:
    projects = hub.get(data_url.rstrip("/") + "/api/projects")["projects"]
    for row in projects:
        if row.get("name") == project:
            return dict(row)
    known = ", ".join(sorted(p["name"] for p in projects)) or "none"
    raise CourseError(f"project {project!r} is not in the catalog (projects: {known})")


def create_course(
    hub: Hub,
    name: str,
    *,
    instructors: Iterable[str],
    students: Iterable[str] = (),
    project: str,
    data_url: str,
    identifiable: bool = False,
) -> dict[str, Any]:
    """Create or update course ``name``; return what it now is (groups, members, grader)."""
    if not COURSE_RE.match(name):
        raise CourseError(
            f"course name {name!r}: lower-case letters, digits, - and _, starting with a "
            f"letter, at most 24 characters"
        )
    instructors, students = list(dict.fromkeys(instructors)), list(dict.fromkeys(students))
    if not instructors:
        raise CourseError("a course needs at least one --instructor")
    both = set(instructors) & set(students)
    if both:
        raise CourseError(f"both instructor and student: {', '.join(sorted(both))}")
    row = _project(hub, project, data_url)
    if not row.get("deidentify") and not identifiable:
        raise CourseError(
            f"project {project!r} is not de-identified: students would see patient identifiers "
            f"(use a de-identified project, or --identifiable for data that has none)"
        )
    grader = grader_account(name)
    everyone = [*instructors, *students, grader]
    existing = {u["name"] for u in hub.request("GET", "/users?limit=10000") or []}
    new = [u for u in everyone if u not in existing]
    if new:
        hub.request("POST", "/users", {"usernames": new})
    properties = {"course": name, "project": project, "grader": grader}
    # the grader account is an instructor at the exchange (it collects and releases feedback)
    members = {students_group(name): students, instructors_group(name): [*instructors, grader]}
    for group, users in members.items():
        if hub.request("GET", f"/groups/{urllib.parse.quote(group, safe='')}", ok=(404,)) is None:
            hub.request("POST", f"/groups/{urllib.parse.quote(group, safe='')}")
        path = f"/groups/{urllib.parse.quote(group, safe='')}"
        role = STUDENTS if group.endswith(STUDENTS) else INSTRUCTORS
        hub.request("PUT", path + "/properties", {**properties, "role": role})
        if users:
            hub.request("POST", path + "/users", {"users": users})
    hub.request(
        "POST", f"/groups/{urllib.parse.quote(project, safe='')}/users", {"users": everyone}
    )
    for instructor in instructors:
        share_grader_server(hub, name, instructor)
    return show_course(hub, name) | {"created_users": new}


def grader_scopes(course: str) -> list[str]:
    """What an instructor may do with the grader's server: start and stop it, and use it."""
    server = f"!server={grader_account(course)}/"
    return [f"start:servers{server}", f"delete:servers{server}", f"access:servers{server}"]


def share_grader_server(hub: Hub, course: str, instructor: str) -> None:
    """Let ``instructor`` drive the grader account's server (idempotent)."""
    grader = urllib.parse.quote(grader_account(course), safe="")
    hub.request("POST", f"/shares/{grader}/", {"user": instructor, "scopes": grader_scopes(course)})


def start_grader_server(hub: Hub, course: str, timeout: float = 300) -> str:
    """Start the grader account's server with an instructor's token (its share allows that);
    return its JupyterLab URL once it answers."""
    grader = grader_account(course)
    hub.request("POST", f"/users/{urllib.parse.quote(grader, safe='')}/server", ok=(400,))
    url = f"{hub.url.rstrip('/')}/user/{grader}/"
    deadline = time.monotonic() + timeout
    while True:
        try:
            hub.get(url + "api/status")
            return url + "lab"
        except (CourseError, ValueError) as exc:  # ValueError: the hub's HTML while it spawns
            if time.monotonic() > deadline:
                raise CourseError(f"{grader}'s server did not start: {exc}") from None
        time.sleep(1)


def grader_shares(hub: Hub, course: str) -> dict[str, list[str]]:
    """Who the grader's server is shared with, and with which scopes."""
    grader = urllib.parse.quote(grader_account(course), safe="")
    got = hub.request("GET", f"/shares/{grader}/", ok=(404,)) or {"items": []}
    return {
        item["user"]["name"]: sorted(item["scopes"]) for item in got["items"] if item.get("user")
    }


def show_course(hub: Hub, name: str) -> dict[str, Any]:
    """The course as the hub has it."""
    groups = {}
    for group in (students_group(name), instructors_group(name)):
        got = hub.request("GET", f"/groups/{urllib.parse.quote(group, safe='')}", ok=(404,))
        if got is None:
            raise CourseError(f"no course {name!r} on this hub (no group {group!r})")
        groups[group] = got
    props = groups[students_group(name)].get("properties") or {}
    return {
        "course": name,
        "project": props.get("project"),
        "grader": props.get("grader"),
        "students": sorted(groups[students_group(name)]["users"]),
        "instructors": sorted(
            set(groups[instructors_group(name)]["users"]) - {props.get("grader")}
        ),
        "grader_shared_with": sorted(grader_shares(hub, name)),
    }
