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

    def server(
        self, user: str, path: str, method: str = "GET", as_user: str = "", **kw: Any
    ) -> requests.Response:
        """``/user/<user>/<path>`` with ``user``'s own token (or ``as_user``'s)."""
        return requests.request(
            method,
            f"{self.stack.url}/user/{user}/{path}",
            headers={"Authorization": f"token {self.tokens[as_user or user]}"},
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
    assert course["grader_shared_with"] == [PROF]
    shares = site.hub("GET", f"/shares/{GRADER}/").json()["items"]
    assert [(x["user"]["name"], sorted(x["scopes"])) for x in shares] == [
        (PROF, sorted(f"{s}:servers!server={GRADER}/" for s in ("start", "delete", "access")))
    ]
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
    f.write("c.Execute.timeout = 300\n")  # notebook 2 reads the cohort through the service

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
todo = iter(answers)  # one answer per cell that says NotImplementedError, in order
for cell in nb["cells"]:
    src = "".join(cell["source"])
    if "raise NotImplementedError()" in src:
        cell["source"] = src.replace("raise NotImplementedError()", next(todo))
assert next(todo, None) is None, "fewer answer cells than answers"
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
import hashlib  # the server's token and the data-only one, as the submissions would see them
for name in ("JUPYTERHUB_API_TOKEN", "VOXELHUB_GRADING_DATA_TOKEN"):
    print("TOKEN", name, hashlib.sha256(os.environ.get(name, "").encode()).hexdigest()[:16])
import json
for student in students:  # what the submissions' own code printed while it was graded
    nb = json.load(open(f"{course}/autograded/{student}/{assignment}/{assignment}.ipynb"))
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            for line in "".join(output.get("text", "")).splitlines():
                if line.startswith("TRESPASS "):
                    print(line, student)
"""

GRADER_RELEASE = r"""
import os, subprocess
r = subprocess.run(["nbgrader", "generate_assignment", assignment, "--force"],
                   cwd=os.path.expanduser("~/course"), capture_output=True, text=True)
assert r.returncode == 0, r.stderr[-3000:]
r = subprocess.run(["nbgrader", "release_assignment", assignment],
                   cwd=os.path.expanduser("~/course"), capture_output=True, text=True)
print("RELEASED", assignment, r.returncode, r.stderr[-2000:])
"""

#: top-level code appended to a wrong answer: what a submission tries while it is autograded
MALICIOUS = """
import os
def _try(what, act):
    try:
        act()
        print("TRESPASS", what, "done")
    except OSError as exc:
        print("TRESPASS", what, type(exc).__name__)
_try("list_instructor_home", lambda: os.listdir({prof_home!r}))
_try("read_instructor_file", lambda: open({prof_home!r} + "/secret.txt").read())
_try("write_instructor_home", lambda: open({prof_home!r} + "/planted.txt", "w").write("x"))
_try("list_student_home", lambda: os.listdir({anna_home!r}))
# the sandbox: no hub token of the grader's server, no process of it, no gradebook, no other
# submission, and the token it does get opens neither the exchange nor the hub's API
import hashlib, ssl, urllib.request
_hash = lambda v: hashlib.sha256(v.encode()).hexdigest()[:16]
print("TRESPASS env_hashes", *sorted({{_hash(v) for v in os.environ.values()}}))
print("TRESPASS env_token", _hash(os.environ.get("JUPYTERHUB_API_TOKEN", "")))
_try("read_server_environ", lambda: open("/proc/{server_pid}/environ").read())
_pids = [p for p in os.listdir("/proc") if p.isdigit()]
print("TRESPASS processes", len(_pids))
def _tokens_in_proc():
    found = set()
    for p in _pids:
        try:
            for item in open(f"/proc/{{p}}/environ").read().split(chr(0)):
                if item.startswith("JUPYTERHUB_API_TOKEN="):
                    found.add(_hash(item.split("=", 1)[1]))
        except OSError:
            pass
    return " ".join(sorted(found))
print("TRESPASS proc_tokens", _tokens_in_proc())
_try("open_gradebook", lambda: open({course!r} + "/gradebook.db", "r+b").read(16))
_try("write_gradebook", lambda: open({course!r} + "/gradebook.db", "wb").write(b"x"))
_try("list_other_submitted", lambda: os.listdir({course!r} + "/submitted/" + {anna!r}))
_try("list_other_autograded", lambda: os.listdir({course!r} + "/autograded/" + {anna!r}))
print("TRESPASS grader_home", *os.listdir(os.path.expanduser("~")))
def _http(what, url, method="GET"):
    req = urllib.request.Request(url, method=method, data=b"{{}}" if method == "POST" else None,
        headers={{"Authorization": "token " + os.environ.get("JUPYTERHUB_API_TOKEN", "")}})
    try:
        with urllib.request.urlopen(req, timeout=30, context=ssl._create_unverified_context()) as r:
            print("TRESPASS", what, r.status)
    except urllib.error.HTTPError as exc:
        print("TRESPASS", what, exc.code)
    except OSError as exc:
        print("TRESPASS", what, type(exc).__name__)
_http("exchange_collect", {exchange!r} + "/inbound/" + {course_id!r})
_http("hub_list_users", {hub!r} + "/hub/api/users")
_http("hub_new_token", {hub!r} + "/hub/api/users/" + {grader!r} + "/tokens", "POST")
_http("hub_start_server", {hub!r} + "/hub/api/users/" + {anna!r} + "/server", "POST")
_http("data_projects", {data!r} + "/api/projects")
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


def _run(site: Site, user: str, code: str, as_user: str = ADMIN, **names: Any) -> str:
    """Run ``code`` in ``user``'s server with ``as_user``'s token (the admin's by default)."""
    from voxelhub_hub.client import run_code

    prelude = "".join(f"{k} = {v!r}\n" for k, v in names.items())
    return run_code(
        site.stack.url, user, site.tokens[as_user], prelude + code, cafile=site.stack.cafile,
        timeout=500,
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

    # the instructor (a unix user with a private file) drives the grader account's server
    # through the share `course create` made: he starts it and works in it with his own token
    site.start_server(PROF)
    prof_home = pwd.getpwnam(PROF).pw_dir
    secret = Path(prof_home) / "secret.txt"
    subprocess.run(["runuser", "-u", PROF, "--", "sh", "-c", f"echo exam > {secret}"], check=True)
    grader_url = f"{site.stack.url}/user/{GRADER}/api/status"
    for student in (ANNA, BEN):  # a student can neither start nor use it
        r = _course_cli(site, "grader", COURSE, token=site.tokens[student])
        assert r.returncode == 2 and "/server: 404" in r.stderr, r.stderr
        assert site.hub("POST", f"/users/{GRADER}/server", user=student).status_code == 404
    r = _course_cli(site, "grader", COURSE, token=site.tokens[PROF])
    assert r.returncode == 0 and r.stdout.strip() == f"{site.stack.url}/user/{GRADER}/lab", r
    site.start_server(GRADER)  # ready (the admin's view)
    r = requests.get(
        grader_url, headers={"Authorization": f"token {site.tokens[ANNA]}"},
        verify=site.stack.verify, timeout=30, allow_redirects=False,
    )  # fmt: skip
    assert r.status_code in (403, 404), r.status_code
    out = _run(site, GRADER, GRADER_SETUP, as_user=PROF, **names)
    assert "NBGRADER release_assignment ps1 -> 0" in out, out

    # sample notebook 2 as an assignment: he uploads its source and releases it
    from tests.hub.test_teaching_assignment import ASSIGNMENT, RIGHT, SCORES, SOURCE, WRONG

    folder = f"course/source/{ASSIGNMENT}"
    for part in ("course/source", folder):
        body = {"type": "directory"}
        r = site.server(GRADER, f"api/contents/{part}", "PUT", as_user=PROF, json=body)
        assert r.status_code in (200, 201), r.text
    body = {"type": "notebook", "format": "json", "content": json.loads(SOURCE.read_text())}
    path = f"api/contents/{folder}/{ASSIGNMENT}.ipynb"
    r = site.server(GRADER, path, "PUT", as_user=PROF, json=body)
    assert r.status_code in (200, 201), r.text
    out = _run(site, GRADER, GRADER_RELEASE, as_user=PROF, assignment=ASSIGNMENT)
    assert _values(out, "RELEASED")[0].startswith(f"{ASSIGNMENT} 0"), out

    def call(user: str, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"token {site.tokens[user]}"} if user else {}
        return requests.request(
            method, f"{ex}/{path}", headers=headers, verify=site.stack.verify, timeout=60, **kw
        )

    assert call(ANNA, "GET", "courses").json()["courses"] == {COURSE: "student"}
    assert call(PROF, "GET", "courses").json()["courses"] == {COURSE: "instructor"}

    # two students fetch both in their own servers; anna answers right, ben wrong, and ben's
    # answer to ps1 also tries the instructor's and anna's files when it runs at autograde
    site.start_server(BEN)
    import psutil

    grader_home = pwd.getpwnam(GRADER).pw_dir
    server = min(
        (
            p
            for p in psutil.process_iter(["username", "create_time"])
            if p.info["username"] == GRADER
        ),
        key=lambda p: p.info["create_time"],
    )  # the grader's server: the oldest process of its account
    assert "JUPYTERHUB_API_TOKEN" in server.environ()
    trespass = MALICIOUS.format(
        prof_home=prof_home, anna_home=pwd.getpwnam(ANNA).pw_dir, server_pid=server.pid,
        course=f"{grader_home}/course", anna=ANNA, grader=GRADER, course_id=COURSE,
        exchange=ex, hub=site.stack.url, data=site.stack.data_url,
    )  # fmt: skip
    answers = {ANNA: ["return x * x"], BEN: ["return 4 if x == 2 else 0\n" + trespass]}
    for student, answer in answers.items():
        out = _run(site, student, STUDENT_WORK, answers=answer, **names)
        assert "LISTED True" in out and "NBGRADER submit" in out, out
    for student, answer in ((ANNA, RIGHT), (BEN, WRONG)):
        out = _run(site, student, STUDENT_WORK, answers=answer, assignment=ASSIGNMENT,
                   course_id=COURSE)  # fmt: skip
        assert f"NBGRADER submit {ASSIGNMENT}" in out, out

    # the instructor collects and autogrades in the grader's server: student code runs as the
    # grader account, which cannot reach his files or another student's
    out = _run(site, GRADER, GRADER_GRADE, as_user=PROF, students=[ANNA, BEN], **names)
    assert _values(out, "COLLECTED") == [str(sorted([ANNA, BEN]))], out
    scores = {line.split()[0]: line.split()[1:] for line in _values(out, "SCORE")}
    assert scores == {ANNA: ["3.0", "3.0"], BEN: ["1.0", "3.0"]}, out
    assert _values(out, "AUTOGRADED_AS") == [GRADER]
    tokens = dict(line.split() for line in _values(out, "TOKEN"))
    server_token, data_token = tokens["JUPYTERHUB_API_TOKEN"], tokens["VOXELHUB_GRADING_DATA_TOKEN"]
    assert server_token != data_token
    tried = {}
    for line in _values(out, "TRESPASS"):
        what, *outcome, student = line.split(" ")
        assert student == BEN, line
        tried[what] = " ".join(outcome)
    env_hashes = tried.pop("env_hashes").split()
    assert server_token not in env_hashes, "the grader server's token reached the submission"
    assert int(tried.pop("processes")) <= 3, out  # the sandbox's init and the kernel
    assert server_token not in tried.pop("proc_tokens").split(), out
    hub_calls = {k: tried.pop(k) for k in ("hub_list_users", "hub_new_token", "hub_start_server")}
    assert set(hub_calls.values()) <= {"403", "404"}, hub_calls  # refused, whichever way
    assert tried == {
        # as before the sandbox: the unix rights of the grader account
        "list_instructor_home": "PermissionError",
        "read_instructor_file": "PermissionError",
        "write_instructor_home": "PermissionError",
        "list_student_home": "PermissionError",
        # (1) its one token is the data-only one
        "env_token": data_token,
        # (2) the grader's server is not in its PID namespace
        "read_server_environ": "FileNotFoundError",
        # (3) the course folder is an empty, read-only folder in there
        "open_gradebook": "FileNotFoundError",
        "write_gradebook": "OSError",
        # (4) no other student's submission
        "list_other_submitted": "FileNotFoundError",
        "list_other_autograded": "FileNotFoundError",
        "grader_home": "course",  # empty but for the way to its own folder
        # (5) the exchange refuses its token (the hub's API too, above); the data service takes it
        "exchange_collect": "403",
        "data_projects": "200",
    }, out
    assert secret.read_text() == "exam\n" and not (Path(prof_home) / "planted.txt").exists()
    out = _run(site, GRADER, GRADER_GRADE, as_user=PROF, students=[ANNA, BEN],
               assignment=ASSIGNMENT, course_id=COURSE)  # fmt: skip
    scores = {line.split()[0]: line.split()[1:] for line in _values(out, "SCORE")}
    expected = {ANNA: SCORES["right"], BEN: SCORES["wrong"]}
    assert scores == {k: [str(a), str(b)] for k, (a, b) in expected.items()}, out

    # feedback reaches each student, their own only
    for student, score in ((ANNA, "3.0 / 3.0"), (BEN, "1.0 / 3.0")):
        out = _run(site, student, STUDENT_FEEDBACK, **names)
        assert _values(out, "FEEDBACK") == [f"{EXERCISE}.html ['{score}']"], out

    # ---- attempts on another student's work: by API ...
    def tar_names(r: requests.Response) -> list[str]:
        with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
            return [m.name for m in tar.getmembers() if m.isfile()]

    one = f"feedback/{COURSE}?assignment={EXERCISE}"
    anna_feedback, ben_feedback = (tar_names(call(u, "GET", one)) for u in (ANNA, BEN))
    assert len(anna_feedback) == len(ben_feedback) == 1 and anna_feedback != ben_feedback
    ben_feedback = tar_names(call(BEN, "GET", f"feedback/{COURSE}"))  # both exercises
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


# ---- 4. ungraded material: nbgitpuller ------------------------------------------------------------


def _git(*args: str, cwd: Path) -> None:
    ident = ["-c", "user.name=Instructor", "-c", "user.email=instructor@example.org"]
    subprocess.run(["git", *ident, *args], cwd=cwd, check=True, capture_output=True)


def test_nbgitpuller_pulls_material_and_keeps_the_students_edit(site: Site) -> None:
    """A link pulls the instructor's repository into anna's home; the second pull brings the
    new material and keeps her edit.  The repository is served over plain (dumb) HTTP, as on
    Kubernetes: over file:// git refuses a repository another unix user owns ("dubious
    ownership"), and dumb HTTP has no shallow clones, hence depth=0."""
    from urllib.parse import urlencode

    site.start_server(ANNA)
    served = Path(tempfile.mkdtemp(prefix="vhlecture-"))
    os.chmod(served, 0o755)
    bare, work = served / "lecture.git", served / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True, capture_output=True)
    week1 = "# Week 1\n\nTopics:\n\nWindowing a CT.\n\nYour notes:\n"
    (work / "notes.md").write_text(week1)
    _git("add", "notes.md", cwd=work)
    _git("commit", "-qm", "week 1", cwd=work)
    _git("push", "-q", "origin", "main", cwd=work)
    _git("update-server-info", cwd=bare)
    http = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(served)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        line = http.stdout.readline() if http.stdout else ""
        port = int(line.split("port ")[1].split()[0])
        query = urlencode({
            "repo": f"http://127.0.0.1:{port}/lecture.git", "branch": "main",
            "targetpath": "lecture", "depth": "0",
        })  # fmt: skip

        def pull() -> str:
            r = site.server(ANNA, f"git-pull/api?{query}")
            assert r.status_code == 200, r.text
            return r.text

        assert '"phase": "finished"' in pull()
        page = site.server(ANNA, f"git-pull?{query}")  # the link's page, as a browser gets it
        assert page.status_code == 200 and "nbgitpuller" in page.text.lower()
        notes = site.server(ANNA, "api/contents/lecture/notes.md").json()
        assert notes["content"] == week1 and notes["writable"]
        # she rewrites a line and adds a note
        mine = week1.replace("a CT.", "a CT: W/L 400/40 for soft tissue.") + "- my note\n"
        put = {"type": "file", "format": "text", "content": mine}
        assert site.server(ANNA, "api/contents/lecture/notes.md", "PUT", json=put).ok

        # the instructor publishes week 2 and changes the file she edited: the title, and the
        # very line she rewrote
        (work / "week2.md").write_text("# Week 2\n\nThresholds.\n")
        revised = week1.replace("Week 1", "Week 1 (revised)").replace("a CT.", "and level a CT.")
        (work / "notes.md").write_text(revised)
        _git("add", "-A", cwd=work)
        _git("commit", "-qm", "week 2", cwd=work)
        _git("push", "-q", "origin", "main", cwd=work)
        _git("update-server-info", cwd=bare)

        assert '"phase": "finished"' in pull()
        week2 = site.server(ANNA, "api/contents/lecture/week2.md").json()
        assert week2["content"] == "# Week 2\n\nThresholds.\n"
        # his new title merges in; her line and her note stay hers
        merged = site.server(ANNA, "api/contents/lecture/notes.md").json()["content"]
        assert merged == mine.replace("Week 1", "Week 1 (revised)"), merged
        owner = Path(pwd.getpwnam(ANNA).pw_dir, "lecture", "week2.md").stat().st_uid
        assert owner == pwd.getpwnam(ANNA).pw_uid  # pulled as her, into her home
    finally:
        http.kill()
        http.wait(timeout=10)
        shutil.rmtree(served, ignore_errors=True)


# ---- 5. the student's screens, in a real browser ---------------------------------------------------

CHROMIUM = "/usr/bin/chromium"  # Debian's package; never `playwright install`
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-quic"]  # fmt: skip
ARTIFACTS = REPO / "tests" / "artifacts" / "hub"
BROWSER_EXERCISE = "ps2"


def _browser_missing() -> str:
    if not os.path.exists(CHROMIUM):
        return f"needs Debian's chromium at {CHROMIUM}"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "needs the playwright package (pip), not its browser download"
    return ""


@pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "ok")
def test_a_student_fetches_and_submits_in_the_browser(site: Site) -> None:
    """Chromium: ben signs up and logs in through the hub's forms, sees examples/ in
    JupyterLab's file browser, opens nbgrader's Assignments screen from its menu, and fetches
    and submits a released exercise with its buttons; the submission reaches the exchange under
    his name.  Every request of the page goes to 127.0.0.1."""
    from urllib.parse import urlparse

    from playwright.sync_api import sync_playwright
    from voxelhub_hub.client import HubBrowser

    # the instructor releases another exercise through the grader's server
    out = _run(site, GRADER, GRADER_SETUP, as_user=PROF, assignment=BROWSER_EXERCISE,
               course_id=COURSE)  # fmt: skip
    assert f"NBGRADER release_assignment {BROWSER_EXERCISE} -> 0" in out, out
    # ben (made by the API) signs up for a password; the admin approves him
    password = secrets.token_urlsafe(18)
    assert "sent to the admin" in HubBrowser(site.stack.url, site.stack.verify).signup(
        BEN, password
    )
    assert site.admin is not None
    site.admin.approve(BEN)
    site.start_server(BEN)

    external: list[str] = []

    def on_request(request: Any) -> None:
        url = urlparse(request.url)
        if url.scheme not in ("data", "blob") and url.hostname != "127.0.0.1":
            external.append(request.url)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1400, "height": 1000}
            )
            page = context.new_page()
            page.on("request", on_request)
            try:
                page.goto(site.stack.url + "/hub/login", timeout=60_000)
                page.fill("#username_input", BEN)
                page.fill("#password_input", password)
                page.click("#login_submit")
                page.wait_for_url(f"**/user/{BEN}/lab**", timeout=120_000)
                page.locator(".jp-DirListing-item", has_text="examples").first.wait_for(
                    timeout=120_000
                )
                page.locator(".lm-MenuBar-item", has_text="Nbgrader").first.click()
                page.locator(".lm-Menu-item", has_text="Assignment List").first.click()
                released = page.locator("#released_assignments_list .list_item").filter(
                    has_text=BROWSER_EXERCISE
                )
                released.first.wait_for(timeout=120_000)
                released.first.get_by_role("button", name="Fetch").click()
                fetched = page.locator("#fetched_assignments_list .list_item").filter(
                    has_text=BROWSER_EXERCISE
                )
                fetched.first.wait_for(timeout=120_000)
                fetched.first.get_by_role("button", name="Submit").click()
                page.locator("#submitted_assignments_list .list_item").filter(
                    has_text=BROWSER_EXERCISE
                ).first.wait_for(timeout=120_000)
                page.screenshot(path=str(ARTIFACTS / "nbgrader_assignments.png"), full_page=True)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "nbgrader_failure.png"), full_page=True)
                raise
        finally:
            browser.close()
    assert not external, external
    # fetched into his home, and his submission is at the exchange under his name
    home = Path(pwd.getpwnam(BEN).pw_dir)
    assert (home / BROWSER_EXERCISE / f"{BROWSER_EXERCISE}.ipynb").exists()
    ex = f"{site.stack.url}/services/voxelhub-exchange/api/inbound/{COURSE}"
    r = requests.get(
        ex, params={"assignment": BROWSER_EXERCISE}, verify=site.stack.verify, timeout=60,
        headers={"Authorization": f"token {site.tokens[PROF]}"},
    )  # fmt: skip
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        owners = {m.name.split("+")[0] for m in tar.getmembers() if m.isfile()}
    assert owners == {BEN}, owners
