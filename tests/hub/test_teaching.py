"""Teaching labs on the real stack (issue 12): examples in every home, courses, exercises.

One module-scoped hub over HTTPS with the data service; the real Philips phantom CT ingested
de-identified into the course's project.  An admin, an instructor and two students, all real unix
users made by the hub.

Needs root (unix accounts); a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.accounts import user_exists

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "extensions"))

from voxelhub_hub.client import HubBrowser, run_notebook  # noqa: E402
from voxelhub_hub.examples import publish_examples  # noqa: E402
from voxelhub_hub.project_groups import remove_group  # noqa: E402
from voxelhub_hub.stack import HubStack  # noqa: E402
from voxelhub_hub.system_users import (  # noqa: E402
    remove_account,
    remove_managed_group_if_unused,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="unix accounts need root"),
]

S = secrets.token_hex(3)
ADMIN, PROF, ANNA, BEN = f"tadm{S}", f"tprof{S}", f"tanna{S}", f"tben{S}"
COHORT = f"cohort{S}"  # the course's project: de-identified
OTHER = f"other{S}"  # a research project the students are not in
COURSE = f"mri{S}"
GRADER = f"grader-{COURSE}"
COURSE_GROUPS = (f"{COURSE}:students", f"{COURSE}:instructors")
DATA_ACCOUNT = f"vhdata{S}"
EXCHANGE_ACCOUNT = f"vhexch{S}"  # the nbgrader exchange service's own account
SAMPLES = sorted(p.name for p in (REPO / "sample_notebooks").glob("*.ipynb"))


class Site:
    def __init__(self, stack: HubStack, state: Path) -> None:
        self.stack, self.state = stack, state
        self.tokens: dict[str, str] = {}
        self.admin: HubBrowser | None = None

    def hub(self, method: str, path: str, user: str = "", **kw: Any) -> requests.Response:
        token = self.tokens[user or ADMIN]
        return requests.request(
            method,
            f"{self.stack.url}/hub/api{path}",
            headers={"Authorization": f"token {token}"},
            verify=self.stack.verify,
            timeout=60,
            **kw,
        )

    def server(self, user: str, path: str, method: str = "GET", **kw: Any) -> requests.Response:
        """``/user/<user>/<path>`` with ``user``'s own token."""
        return requests.request(
            method,
            f"{self.stack.url}/user/{user}/{path}",
            headers={"Authorization": f"token {self.tokens[user]}"},
            verify=self.stack.verify,
            timeout=60,
            **kw,
        )

    def start_server(self, user: str, timeout: float = 240) -> None:
        r = self.hub("POST", f"/users/{user}/server")
        assert r.status_code in (201, 202, 400), r.text
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.hub("GET", f"/users/{user}").json()["servers"].get("")
            if server and server["ready"]:
                return
            time.sleep(0.5)
        raise TimeoutError(f"{user}'s server not ready; hub log:\n{self.stack.tail()}")


def _ingest(state: Path, dicom_root: Path) -> Path:
    from voxelhub import ingest

    store = state / "store"
    phantom = dicom_root / "ct_philips_ingenuity_phantom"
    for project, deidentify in ((COHORT, True), (OTHER, False)):
        report = ingest(phantom, store, project=project, deidentify=deidentify, progress=False)
        assert not report.failed, report.summary()
    return store


@pytest.fixture(scope="module")
def site(shared_dicom: Path) -> Iterator[Site]:
    import psutil

    state = Path(tempfile.mkdtemp(prefix="vhteachstate-"))
    os.chmod(state, 0o755)
    stack = HubStack(
        state,
        admins=[ADMIN],
        projects={COHORT: [ANNA], OTHER: [PROF]},
        spawner="system",
        tls=True,
        extra_env={"VOXELHUB_DATA_USER": DATA_ACCOUNT, "VOXELHUB_EXCHANGE_USER": EXCHANGE_ACCOUNT},
    )
    users = (ADMIN, PROF, ANNA, BEN, GRADER)
    try:
        stack.store = str(_ingest(state, shared_dicom))
        stack.start(timeout=180)
        site = Site(stack, state)
        admin = HubBrowser(stack.url, stack.verify)
        password = secrets.token_urlsafe(18)
        admin.signup(ADMIN, password)
        admin.login(ADMIN, password, next_url="/hub/home")
        site.admin = admin
        site.tokens[ADMIN] = admin.new_token(note="teaching test")
        for name in (PROF, ANNA, BEN):
            if site.hub("GET", f"/users/{name}").status_code == 404:
                assert site.hub("POST", f"/users/{name}").status_code == 201
            body = {"note": "teaching test", "expires_in": 3600}
            r = site.hub("POST", f"/users/{name}/tokens", json=body)
            assert r.status_code == 201, r.text
            site.tokens[name] = r.json()["token"]
        yield site
    finally:
        survivors = stack.stop()
        leftovers = []
        for p in psutil.process_iter(["pid", "username", "cmdline"]):
            if p.info["username"] in (*users, DATA_ACCOUNT, EXCHANGE_ACCOUNT):
                leftovers.append(f"{p.pid} {p.info['username']} {p.info['cmdline']}")
                p.kill()
        for name in users:
            remove_account(name)
        remove_managed_group_if_unused()
        for account in (DATA_ACCOUNT, EXCHANGE_ACCOUNT):
            subprocess.run(["userdel", account], capture_output=True, check=False)
            subprocess.run(["groupdel", account], capture_output=True, check=False)
        for group in (COHORT, OTHER, *COURSE_GROUPS):
            remove_group(group)  # the unix groups mirroring hub groups (made at spawns)
        shutil.rmtree(state, ignore_errors=True)
        assert not survivors, f"processes still running after the hub stopped: {survivors}"
        assert not leftovers, f"processes of test users still running: {leftovers}"
        for name in (*users, DATA_ACCOUNT, EXCHANGE_ACCOUNT):
            assert not user_exists(name), f"unix user {name} left behind"


# ---- 1. examples/ in every home ----------------------------------------------------------------


def test_publish_examples_is_read_only_and_follows_the_checkout(tmp_path: Path) -> None:
    source, target = tmp_path / "src", tmp_path / "published"
    source.mkdir()
    (source / "a.ipynb").write_text('{"cells": []}')
    (source / "notes.txt").write_text("not a notebook")
    assert publish_examples(source, target)
    assert sorted(p.name for p in target.iterdir() if not p.name.startswith(".")) == ["a.ipynb"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o555
    assert stat.S_IMODE((target / "a.ipynb").stat().st_mode) == 0o444
    assert not publish_examples(source, target)  # unchanged: not copied again
    (source / "a.ipynb").write_text('{"cells": [], "v": 2}')
    (source / "b.ipynb").write_text('{"cells": []}')
    assert publish_examples(source, target)  # the checkout changed: published again
    assert (target / "a.ipynb").read_text() == '{"cells": [], "v": 2}'
    assert (target / "b.ipynb").exists()
    assert not list(tmp_path.glob("published.*")), "staging folders left behind"


def test_every_user_finds_the_examples_read_only_and_they_run(site: Site) -> None:
    site.start_server(ANNA)
    home = Path(pwd.getpwnam(ANNA).pw_dir)
    published = site.state / "examples"
    assert os.readlink(home / "examples") == str(published)
    st = published.stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o555)
    for name in SAMPLES:
        st = (published / name).stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o444), name
        assert (published / name).read_bytes() == (REPO / "sample_notebooks" / name).read_bytes()

    # what anna's JupyterLab lists: the three notebooks, read-only
    r = site.server(ANNA, "api/contents/examples")
    assert r.status_code == 200, r.text
    listed = {e["name"]: e for e in r.json()["content"]}
    assert sorted(listed) == SAMPLES
    assert not any(e["writable"] for e in listed.values())
    # she cannot change, add or delete there ...
    nb = site.server(ANNA, f"api/contents/examples/{SAMPLES[1]}").json()
    assert nb["writable"] is False
    put = {"type": "notebook", "format": "json", "content": nb["content"]}
    assert site.server(
        ANNA, f"api/contents/examples/{SAMPLES[1]}", "PUT", json=put
    ).status_code in (
        403,
        500,
    )
    assert site.server(ANNA, "api/contents/examples/new.ipynb", "PUT", json=put).status_code in (
        403,
        500,
    )
    assert site.server(ANNA, f"api/contents/examples/{SAMPLES[0]}", "DELETE").status_code >= 400
    assert (published / SAMPLES[0]).exists()
    # ... but copies a notebook into her home and edits the copy
    r = site.server(ANNA, "api/contents", "POST", json={"copy_from": f"examples/{SAMPLES[1]}"})
    assert r.status_code == 201, r.text
    copy = r.json()["path"]
    assert "/" not in copy and site.server(ANNA, f"api/contents/{copy}").json()["writable"]
    assert site.server(ANNA, f"api/contents/{copy}", "PUT", json=put).status_code == 200

    # notebook 2 as anna sees it in examples/ runs unchanged in her server, on the course data
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / SAMPLES[1]
        local.write_text(json.dumps(nb["content"]))
        outputs = run_notebook(
            site.stack.url, ANNA, site.tokens[ANNA], local, cafile=site.stack.cafile, timeout=300
        )
    text = "".join(outputs)
    assert text.count("✓") == 3, text
    assert f"project: {COHORT} | de-identified: True" in text, text

    # a user's own "examples" is never replaced (the hook runs as root in their home)
    assert not user_exists(BEN)  # no account yet: the hub makes it at his first spawn
    site.start_server(BEN)
    ben_home = Path(pwd.getpwnam(BEN).pw_dir)
    assert os.readlink(ben_home / "examples") == str(published)
    site.hub("DELETE", f"/users/{BEN}/server")
    _wait_stopped(site, BEN)
    (ben_home / "examples").unlink()
    mine = ben_home / "examples"
    subprocess.run(["runuser", "-u", BEN, "--", "mkdir", str(mine)], check=True)
    site.start_server(BEN)
    assert (
        mine.is_dir() and not mine.is_symlink() and mine.stat().st_uid == pwd.getpwnam(BEN).pw_uid
    )


def _wait_stopped(site: Site, user: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "" not in site.hub("GET", f"/users/{user}").json()["servers"]:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{user}'s server did not stop")


# ---- 2. courses ----------------------------------------------------------------------------------


def _course_cli(site: Site, *args: str, token: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOXELHUB_", "JUPYTERHUB_"))}
    if token:
        env["VOXELHUB_HUB_TOKEN"] = token
    common = ["--hub", site.stack.url, "--cafile", str(site.stack.cafile)]
    common += ["--data-url", site.stack.data_url]
    return subprocess.run(
        [sys.executable, "-m", "voxelhub.cli", "course", *args, *common],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_an_admin_creates_a_course_from_a_roster(site: Site, tmp_path: Path) -> None:
    from voxelhub.errors import AccessDenied

    roster = tmp_path / "roster.csv"
    roster.write_text(f"name,username\nAnna A.,{ANNA}\nBen B.,{BEN}\n\n")
    create = ["create", COURSE, "--instructor", PROF, "--roster", str(roster)]
    admin = site.tokens[ADMIN]

    r = _course_cli(site, *create, "--project", COHORT)
    assert r.returncode == 2 and "VOXELHUB_HUB_TOKEN" in r.stderr, r.stderr
    r = _course_cli(site, *create, "--project", COHORT, token=site.tokens[ANNA])
    assert r.returncode == 2 and "403" in r.stderr, r.stderr  # a student is no admin
    r = _course_cli(site, *create, "--project", OTHER, token=admin)
    assert r.returncode == 2 and "not de-identified" in r.stderr, r.stderr
    r = _course_cli(site, *create, "--project", f"nosuch{S}", token=admin)
    assert r.returncode == 2 and "not in the catalog" in r.stderr, r.stderr
    r = _course_cli(
        site, "create", "Bad Name", "--instructor", PROF, "--project", COHORT, token=admin
    )
    assert r.returncode == 2 and "course name" in r.stderr, r.stderr
    assert site.hub("GET", f"/groups/{COURSE}:students").status_code == 404  # nothing made

    r = _course_cli(site, *create, "--project", COHORT, token=admin)
    assert r.returncode == 0, r.stderr
    course = json.loads(r.stdout)
    assert course["students"] == sorted([ANNA, BEN]) and course["instructors"] == [PROF]
    assert course["project"] == COHORT and course["grader"] == GRADER
    assert course["created_users"] == [GRADER]  # the others existed
    again = _course_cli(site, *create, "--project", COHORT, token=admin)  # idempotent
    assert again.returncode == 0 and json.loads(again.stdout)["created_users"] == []

    groups = {g: site.hub("GET", f"/groups/{g}").json() for g in COURSE_GROUPS}
    assert sorted(groups[f"{COURSE}:students"]["users"]) == sorted([ANNA, BEN])
    assert sorted(groups[f"{COURSE}:instructors"]["users"]) == sorted([PROF, GRADER])
    assert groups[f"{COURSE}:students"]["properties"] == {
        "course": COURSE, "project": COHORT, "grader": GRADER, "role": "students",
    }  # fmt: skip
    cohort = set(site.hub("GET", f"/groups/{COHORT}").json()["users"])
    assert {ANNA, BEN, PROF, GRADER} <= cohort

    # the data service: every student reads the cohort as a viewer, and only the cohort
    import numpy as np

    import voxelhub

    for user in (ANNA, BEN):
        deadline = time.monotonic() + 30  # memberships are cached 5 s at the service
        while True:
            cat = voxelhub.open_catalog(
                site.stack.data_url, storage_options={"token": site.tokens[user]}
            )
            if set(cat.series().project) == {COHORT} or time.monotonic() > deadline:
                break
            time.sleep(1)
        frame = cat.series()
        assert set(frame.project) == {COHORT}, (user, set(frame.project))
        uid = frame.volume_uid.iloc[0]
        assert float(cat.open_series(uid).isel(z=0).sum().compute()) != 0.0
        shape = cat.stored_volume(uid).shape
        with pytest.raises(AccessDenied, match="viewer"):
            cat.put_labels(uid, "mine", np.ones(shape, np.uint8), None, False)
    shown = _course_cli(site, "show", COURSE, token=admin)
    assert shown.returncode == 0 and json.loads(shown.stdout)["students"] == sorted([ANNA, BEN])


# ---- 3. exercises: nbgrader through the exchange service -----------------------------------------

EXERCISE = "ps1"
SOURCE_NOTEBOOK = r"""
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

def cell(source, grade_id, **meta):
    c = new_code_cell(source)
    c.metadata["nbgrader"] = {"grade_id": grade_id, "schema_version": 3, "locked": False,
                              "solution": False, "grade": False, "task": False, **meta}
    return c

nb = new_notebook(cells=[
    new_markdown_cell("Write `square(x)`."),
    cell("def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION",
         "square", solution=True),
    cell("assert square(2) == 4", "visible", grade=True, points=1, locked=True),
    cell("assert square(0) == 0\n### BEGIN HIDDEN TESTS\nassert square(3) == 9\n"
         "### END HIDDEN TESTS", "hidden", grade=True, points=2, locked=True),
])
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
"""

GRADER_SETUP = (
    SOURCE_NOTEBOOK
    + r"""
import os, subprocess
course = os.path.expanduser("~/course")
os.makedirs(f"{course}/source/{assignment}", exist_ok=True)
nbformat.write(nb, f"{course}/source/{assignment}/{assignment}.ipynb")
with open(f"{course}/nbgrader_config.py", "w") as f:
    f.write(f"c = get_config()\nc.CourseDirectory.course_id = {course_id!r}\n")

def nbgrader(*args):
    r = subprocess.run(["nbgrader", *args], cwd=course, capture_output=True, text=True)
    print("NBGRADER", " ".join(args), "->", r.returncode)
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0, r.stderr[-3000:]

nbgrader("generate_assignment", assignment, "--force")
nbgrader("release_assignment", assignment)
"""
)

STUDENT_WORK = r"""
import json, os, subprocess

def nbgrader(*args):
    r = subprocess.run(["nbgrader", *args], cwd=os.path.expanduser("~"), capture_output=True,
                       text=True)
    print("NBGRADER", " ".join(args), "->", r.returncode)
    print(r.stdout[-2000:], r.stderr[-2000:])
    return r

print("LISTED", course_id in nbgrader("list").stdout + nbgrader("list").stderr)
assert nbgrader("fetch_assignment", assignment, "--course", course_id).returncode == 0
path = os.path.expanduser(f"~/{assignment}/{assignment}.ipynb")
nb = json.load(open(path))
src = "".join(nb["cells"][1]["source"])
assert "raise NotImplementedError()" in src, src
nb["cells"][1]["source"] = src.replace("raise NotImplementedError()", answer)
json.dump(nb, open(path, "w"))
assert nbgrader("submit", assignment, "--course", course_id).returncode == 0
"""

GRADER_GRADE = r"""
import os, subprocess
from nbgrader.api import Gradebook
course = os.path.expanduser("~/course")

def nbgrader(*args):
    r = subprocess.run(["nbgrader", *args], cwd=course, capture_output=True, text=True)
    print("NBGRADER", " ".join(args), "->", r.returncode)
    print(r.stdout[-3000:], r.stderr[-3000:])
    assert r.returncode == 0, r.stderr[-3000:]

nbgrader("collect", assignment)
print("COLLECTED", sorted(os.listdir(f"{course}/submitted")))
nbgrader("autograde", assignment)
with Gradebook(f"sqlite:///{course}/gradebook.db", course_id) as gb:
    for student in students:
        s = gb.find_submission(assignment, student)
        print("SCORE", student, s.score, s.max_score)
nbgrader("generate_feedback", assignment)
nbgrader("release_feedback", assignment)
print("AUTOGRADED_AS", __import__("getpass").getuser())
"""

STUDENT_FEEDBACK = r"""
import glob, os, subprocess
r = subprocess.run(["nbgrader", "fetch_feedback", assignment, "--course", course_id],
                   cwd=os.path.expanduser("~"), capture_output=True, text=True)
print("FETCH", r.returncode, r.stderr[-2000:])
for path in glob.glob(os.path.expanduser(f"~/{assignment}/feedback/*/*.html")):
    text = open(path).read()
    import re
    print("FEEDBACK", os.path.basename(path), re.findall(r"Score: ([0-9.]+ / [0-9.]+)", text)[:1])
"""

TRESPASS = r"""
import os
def tries(path):
    try:
        os.listdir(path) if os.path.isdir(path) else open(path).read()
        return "read"
    except PermissionError:
        return "denied"
    except FileNotFoundError:
        return "missing"
print("EXCHANGE_DIR", tries(exchange_dir))
print("EXCHANGE_COURSE", tries(os.path.join(exchange_dir, course_id, "inbound")))
print("OTHER_HOME", tries(other_home))
print("OTHER_FEEDBACK", tries(os.path.join(other_home, assignment, "feedback")))
"""


def _values(out: str, key: str) -> list[str]:
    return [line.split(" ", 1)[1] for line in out.splitlines() if line.startswith(key + " ")]


def _run(site: Site, user: str, code: str, **names: Any) -> str:
    from voxelhub_hub.client import run_code

    prelude = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    return run_code(
        site.stack.url, user, site.tokens[ADMIN], prelude + code, cafile=site.stack.cafile,
        timeout=400,
    )  # fmt: skip


def test_release_fetch_submit_collect_autograde_feedback(site: Site) -> None:
    """The whole round on the real stack, each step in the acting user's own server."""
    import io
    import tarfile

    ex = site.stack.url + "/services/voxelhub-exchange/api"
    names = {"assignment": EXERCISE, "course_id": COURSE}
    deadline = time.monotonic() + 60
    while requests.get(ex + "/health", verify=site.stack.verify, timeout=10).status_code != 200:
        assert time.monotonic() < deadline, site.stack.tail()
        time.sleep(1)

    # the grader account authors, generates and releases (its own unix user, its own server)
    site.start_server(GRADER)
    out = _run(site, GRADER, GRADER_SETUP, **names)
    assert "NBGRADER release_assignment ps1 -> 0" in out, out

    def call(user: str, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"token {site.tokens[user]}"} if user else {}
        return requests.request(
            method, f"{ex}/{path}", headers=headers, verify=site.stack.verify, timeout=60, **kw
        )

    assert call(ANNA, "GET", "courses").json()["courses"] == {COURSE: "student"}
    assert call(PROF, "GET", "courses").json()["courses"] == {COURSE: "instructor"}

    # two students fetch it in their own servers; anna answers right, ben wrong
    site.start_server(BEN)
    answers = {ANNA: "return x * x", BEN: "return 4 if x == 2 else 0"}
    for student, answer in answers.items():
        out = _run(site, student, STUDENT_WORK, answer=answer, **names)
        assert "LISTED True" in out and "NBGRADER submit" in out, out

    # collect and autograde in the grader's server (student code runs as the grader account)
    out = _run(site, GRADER, GRADER_GRADE, students=[ANNA, BEN], **names)
    assert _values(out, "COLLECTED") == [str(sorted([ANNA, BEN]))], out
    scores = {line.split()[0]: line.split()[1:] for line in _values(out, "SCORE")}
    assert scores == {ANNA: ["3.0", "3.0"], BEN: ["1.0", "3.0"]}, out
    assert _values(out, "AUTOGRADED_AS") == [GRADER]

    # feedback reaches each student, their own only
    for student, score in ((ANNA, "3.0 / 3.0"), (BEN, "1.0 / 3.0")):
        out = _run(site, student, STUDENT_FEEDBACK, **names)
        assert _values(out, "FEEDBACK") == [f"{EXERCISE}.html ['{score}']"], out

    # ---- attempts on another student's work: by API ...
    def tar_names(r: requests.Response) -> list[str]:
        with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
            return [m.name for m in tar.getmembers() if m.isfile()]

    anna_feedback = tar_names(call(ANNA, "GET", f"feedback/{COURSE}"))
    ben_feedback = tar_names(call(BEN, "GET", f"feedback/{COURSE}"))
    assert len(anna_feedback) == len(ben_feedback) == 1 and anna_feedback != ben_feedback
    refused = {
        "collect": call(BEN, "GET", f"inbound/{COURSE}"),
        "collect one": call(BEN, "GET", f"inbound/{COURSE}?assignment={EXERCISE}"),
        "write feedback": call(BEN, "PUT", f"feedback/{COURSE}/{EXERCISE}/{ANNA}", data=b""),
        "release": call(BEN, "PUT", f"outbound/{COURSE}/{EXERCISE}?force=1", data=b""),
        "withdraw": call(BEN, "DELETE", f"outbound/{COURSE}/{EXERCISE}"),
        "traversal": call(BEN, "GET", f"outbound/{COURSE}/..%2F..%2F"),
        "not in the course": call(ADMIN, "GET", f"outbound/{COURSE}"),
        "no token": call("", "GET", f"outbound/{COURSE}"),
    }
    for what, r in refused.items():
        assert r.status_code in (400, 401, 403, 404, 405), (what, r.status_code, r.text)
    # asking for anna's feedback by name still answers ben's own, never hers
    assert tar_names(call(BEN, "GET", f"feedback/{COURSE}?student={ANNA}")) == ben_feedback
    # a submission claiming to be anna's is filed under ben, with the service's time
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in ((f"{EXERCISE}.ipynb", b"{}"), ("timestamp.txt", b"2000-01-01")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    r = call(BEN, "POST", f"inbound/{COURSE}/{EXERCISE}", data=buf.getvalue())
    assert r.status_code == 200 and r.json()["student"] == BEN, r.text
    assert not r.json()["timestamp"].startswith("2000")
    inbound = tar_names(call(PROF, "GET", f"inbound/{COURSE}"))
    owners = {name.split("+")[0] for name in inbound}
    assert owners == {ANNA, BEN}, inbound
    # a link or an escaping name in an upload is refused
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tar:
        info = tarfile.TarInfo("../../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    assert (
        call(BEN, "POST", f"inbound/{COURSE}/{EXERCISE}", data=evil.getvalue()).status_code == 400
    )
    link = io.BytesIO()
    with tarfile.open(fileobj=link, mode="w:gz") as tar:
        info = tarfile.TarInfo("x.ipynb")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tar.addfile(info)
    assert (
        call(BEN, "POST", f"inbound/{COURSE}/{EXERCISE}", data=link.getvalue()).status_code == 400
    )

    # ... and by file path, from ben's own kernel
    out = _run(
        site, BEN, TRESPASS, exchange_dir=str(site.state / "exchange"),
        other_home=pwd.getpwnam(ANNA).pw_dir, **names,
    )  # fmt: skip
    assert _values(out, "EXCHANGE_DIR") == ["denied"], out
    assert _values(out, "EXCHANGE_COURSE") == ["denied"], out
    assert _values(out, "OTHER_HOME") == ["denied"], out
    assert _values(out, "OTHER_FEEDBACK") == ["denied"], out

    # every refusal is in the service's log, with who tried
    log = site.stack.log_path.read_text(errors="replace")
    assert f"refused user={BEN} action=inbound.collect" in log
    assert f"refused user={BEN} action=feedback.release" in log
    assert f"refused user={BEN} action=outbound.release" in log
