"""The multi-user stack end to end: hub + proxy (HTTPS) + Dask Gateway + two real unix users.

One module-scoped stack on free ports with a throwaway state folder.  People sign up and log in
through the forms, an admin approves them, their servers spawn as their own unix users, and code
runs in a kernel of each (Jupyter Server REST + websocket): a Gateway cluster of 2 workers opens a
volume of the user's project through the data service (with the server's hub token) and sums
it; the other user's volume is refused by the service, and the store's files by the OS (they
belong to the service's own account).  Sample notebook 2 runs, cell by cell, in a kernel
of alice's server on the course's shared, de-identified data.  Chromium logs alice in and runs
sample notebook 1, then a notebook showing the slice viewer, the 3-D view and the feature panel
on her volume read through the data service; the panel runs an extraction.  Afterwards nothing the stack
started is left running, and the unix accounts and project groups the hub created are removed.

Needs root (unix users, setuid spawner); about 1.5 minutes on 2 cores.
"""

from __future__ import annotations

import concurrent.futures as cf
import grp
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import psutil
import pytest
import requests

from tests.accounts import group_exists, user_exists
from tests.dicom_factory import write_series

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "extensions"))

from voxelhub_hub.client import HubBrowser, HubError, run_code, run_notebook  # noqa: E402
from voxelhub_hub.project_groups import remove_group, unix_group  # noqa: E402
from voxelhub_hub.stack import HubStack  # noqa: E402
from voxelhub_hub.system_users import MANAGED_GROUP, remove_account  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(os.geteuid() != 0, reason="real unix users need root (useradd, setuid)"),
]

SUFFIX = secrets.token_hex(3)
ADMIN, ALICE, BOB = f"vhadm{SUFFIX}", f"vha{SUFFIX}", f"vhb{SUFFIX}"
LUNG, BRAIN = f"lung{SUFFIX}", f"brain{SUFFIX}"
COURSE, DEMO = f"course{SUFFIX}", f"demo{SUFFIX}"
PROJECTS = {LUNG: [ALICE], BRAIN: [BOB], COURSE: [ALICE, BOB], DEMO: [ALICE]}
PROJECT_OF = {ALICE: LUNG, BOB: BRAIN}
DATA_ACCOUNT = f"vhdata{SUFFIX}"  # the data service's own unix account
NOTEBOOK_1 = REPO / "sample_notebooks" / "01_explore_a_dataset.ipynb"
NOTEBOOK = REPO / "sample_notebooks" / "02_teaching_exercise.ipynb"
CHROMIUM = "/usr/bin/chromium"  # Debian's package; never `playwright install`
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--use-angle=swiftshader",  # WebGL2 on the CPU for the 3-D view (ipyniivue)
    "--enable-unsafe-swiftshader",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "tests" / "artifacts" / "hub"


def password() -> str:
    return secrets.token_urlsafe(18)


class Site:
    """The running stack plus what the tests know about it."""

    def __init__(
        self, stack: HubStack, store: Path, sums: dict[str, float], uids: dict[str, str]
    ) -> None:
        self.stack, self.store, self.sums, self.uids = stack, store, sums, uids
        self.passwords = {name: password() for name in (ADMIN, ALICE, BOB)}
        self.browsers: dict[str, HubBrowser] = {}
        self.tokens: dict[str, str] = {}
        self.start_seconds = 0.0

    def browser(self) -> HubBrowser:
        return HubBrowser(self.stack.url, self.stack.verify)


def _ingest_store(state: Path, dicom_root: Path) -> tuple[Path, dict[str, float], dict[str, str]]:
    """The site's store: a synthetic CT per user project; the real phantom CT de-identified for
    the course (notebook 2), and as acquired for alice's demo project (notebook 1 in the browser).
    Returns the store, each user project's voxel sum and the UID of the volume summed."""
    from voxelhub import ingest, open_catalog, open_series

    store = state / "store"
    sums, uids = {}, {}
    for i, project in enumerate((LUNG, BRAIN)):
        dicom = state / "dicom" / project
        write_series(dicom, slices=10, rows=32, columns=32, seed=i, patient_id=f"PAT-{i}")
        report = ingest(dicom, store, project=project, progress=False)
        assert not report.failed, report.summary()
    phantom = dicom_root / "ct_philips_ingenuity_phantom"
    for project, deidentify in ((COURSE, True), (DEMO, False)):
        report = ingest(phantom, store, project=project, deidentify=deidentify, progress=False)
        assert not report.failed, report.summary()
    cat = open_catalog(store)
    for project in (LUNG, BRAIN):
        row = cat.series(project=project).iloc[0]
        sums[project] = float(np.asarray(open_series(row, catalog=cat)).astype(np.float64).sum())
        uids[project] = str(row.volume_uid)
    cat.close()
    return store, sums, uids


def _files_owned_by(
    uids: set[int], since: float = 0.0, folder: str = tempfile.gettempdir()
) -> list[str]:
    """Entries directly in ``folder`` (the shared /tmp) owned by ``uids``, changed after ``since``."""
    found = []
    for entry in os.scandir(folder):
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if st.st_uid in uids and st.st_ctime >= since:
            found.append(entry.path)
    return found


@pytest.fixture(scope="module")
def site(shared_dicom: Path) -> Iterator[Site]:
    # not pytest's tmp_path: /tmp/pytest-of-root is 0700 and the unix users must reach their
    # cluster folders and the store below the state folder
    group_existed = group_exists(MANAGED_GROUP)
    started = time.time()
    state = Path(tempfile.mkdtemp(prefix="vhhubstate-"))
    os.chmod(state, 0o755)
    stack = HubStack(
        state,
        admins=[ADMIN],
        projects=PROJECTS,
        spawner="system",
        tls=True,
        extra_env={"VOXELHUB_DATA_USER": DATA_ACCOUNT},
    )
    site: Site | None = None
    try:
        store, sums, uids = _ingest_store(state, shared_dicom)
        stack.store = str(store)
        site = Site(stack, store, sums, uids)
        site.start_seconds = stack.start(timeout=180)
        yield site
    finally:
        survivors = stack.stop()
        users = {ADMIN, ALICE, BOB}
        uids = {pwd.getpwnam(name).pw_uid for name in users if user_exists(name)}
        leftovers = []
        for p in psutil.process_iter(["pid", "username", "cmdline"]):
            if p.info["username"] in users:
                leftovers.append(
                    f"{p.pid} {p.info['username']} {' '.join(p.info['cmdline'] or [])[:100]}"
                )
                p.kill()
        for name in users:
            remove_account(name)
        if user_exists(DATA_ACCOUNT):
            for p in psutil.process_iter(["pid", "username"]):
                if p.info["username"] == DATA_ACCOUNT:
                    leftovers.append(f"{p.pid} {DATA_ACCOUNT} (data service)")
                    p.kill()
            subprocess.run(["userdel", DATA_ACCOUNT], check=True)
            subprocess.run(["groupdel", DATA_ACCOUNT], check=False, capture_output=True)
        for project in PROJECTS:
            remove_group(project)
        shutil.rmtree(state, ignore_errors=True)
        stray = _files_owned_by(uids, since=started)
        for path in _files_owned_by(uids):  # no file of a deleted user stays in /tmp
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        if (
            not group_existed
            and group_exists(MANAGED_GROUP)
            and not grp.getgrnam(MANAGED_GROUP).gr_mem
        ):
            subprocess.run(["groupdel", MANAGED_GROUP], check=True)
        assert not survivors, f"processes still running after the hub stopped: {survivors}"
        assert not leftovers, f"processes of test users still running: {leftovers}"
        assert not stray, f"files the test users left in {tempfile.gettempdir()}: {stray}"
        for name in users:
            with pytest.raises(KeyError):
                pwd.getpwnam(name)
        for project in PROJECTS:
            assert not group_exists(unix_group(project)), f"unix group of {project} left behind"


@pytest.fixture(scope="module")
def logged_in(site: Site) -> Site:
    """Admin signs up (approved on sign-up); alice and bob sign up, wait for approval, log in."""
    admin = site.browser()
    assert "successful" in admin.signup(ADMIN, site.passwords[ADMIN])
    admin.login(ADMIN, site.passwords[ADMIN])
    site.browsers[ADMIN] = admin
    for name in (ALICE, BOB):
        b = site.browser()
        assert "sent to the admin" in b.signup(name, site.passwords[name])
        with pytest.raises(HubError, match="not been authorized"):
            b.login(name, site.passwords[name])
        site.browsers[name] = b
    for name in (ALICE, BOB):
        admin.approve(name)
    with pytest.raises(HubError, match="Invalid username or password"):
        site.browser().login(ALICE, "not-" + site.passwords[ALICE])
    for name in (ALICE, BOB):
        site.browsers[name].login(name, site.passwords[name])  # redirects to /hub/spawn
    for name in (ALICE, BOB):
        seconds = site.browsers[name].wait_for_server(timeout=240)
        print(f"\n{name}: server ready {seconds:.1f} s after login")
        site.tokens[name] = site.browsers[name].new_token(note="e2e test")
    return site


KERNEL_CODE = """
import getpass, grp, os, resource, time
import voxelhub
from voxelhub.compute import client


def groups():
    return sorted(grp.getgrgid(g).gr_name for g in os.getgroups() if grp.getgrgid(g).gr_name.startswith("vhp-"))


def denied(path):
    try:
        os.listdir(path)
    except PermissionError:
        return "denied"
    return "readable"


t0 = time.monotonic()
c = client(minimum=2, maximum=2)            # no arguments needed for the gateway address
c.wait_for_workers(2, timeout=180)
print("CLUSTER_SECONDS", round(time.monotonic() - t0, 1))
print("KERNEL_USER", getpass.getuser())
print("WORKER_USERS", sorted(set(c.run(getpass.getuser).values())))
print("NWORKERS", len(c.scheduler_info()["workers"]))
print("DASHBOARD", c.dashboard_link)
print("KERNEL_GROUPS", ",".join(groups()))
print("WORKER_GROUPS", sorted(set(",".join(g) for g in c.run(groups).values())))
print("KERNEL_RLIMIT_AS", resource.getrlimit(resource.RLIMIT_AS)[1])
cat = voxelhub.open_catalog()              # $VOXELHUB_STORE: the data service, with the hub token
print("CATALOG_READ_ONLY", cat.read_only)
print("CATALOG_PROJECTS", ",".join(sorted(set(cat.series().project))))
row = cat.series(project={project!r}).iloc[0]
volume = voxelhub.open_series(row, catalog=cat)
print("SUM", float(volume.astype("float64").sum().compute()))    # read by the workers, via the service
store = {store!r}
print("OWN_PROJECT", denied(os.path.join(store, "projects", {project!r})))
print("OTHER_PROJECT", denied(os.path.join(store, "projects", {other_project!r})))
print("STORE_ROOT", denied(store))
try:
    voxelhub.open_series({other_uid!r}, catalog=cat).sum().compute()
    print("OTHER_VOLUME readable")
except Exception as exc:
    print("OTHER_VOLUME", type(exc).__name__)
print("STORE_TMP", denied(os.path.join(store, ".tmp")))
print("OTHER_HOME", denied(os.path.expanduser("~{other}")))
print("OWN_HOME_MODE", oct(os.stat(os.path.expanduser("~")).st_mode & 0o777))
c.cluster.shutdown()
c.close()
"""


def _values(out: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


def test_both_users_compute_on_gateway_clusters_as_themselves(logged_in: Site) -> None:
    site = logged_in
    other = {ALICE: BOB, BOB: ALICE}

    def run(name: str) -> tuple[str, float, str]:
        t0 = time.monotonic()
        code = KERNEL_CODE.format(
            project=PROJECT_OF[name],
            other_project=PROJECT_OF[other[name]],
            other=other[name],
            other_uid=site.uids[PROJECT_OF[other[name]]],
            store=str(site.store),
        )
        out = run_code(
            site.stack.url, name, site.tokens[name], code, cafile=site.stack.cafile, timeout=300
        )
        return name, time.monotonic() - t0, out

    with cf.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, (ALICE, BOB)))
    for name, seconds, out in results:
        print(f"\n{name}: kernel + cluster + sum {seconds:.1f} s\n{out}")
        v = _values(out)
        assert v.get("KERNEL_USER") == name, out
        assert v.get("WORKER_USERS") == f"['{name}']", f"workers must run as {name}: {out}"
        assert v.get("NWORKERS") == "2", out
        assert float(v["SUM"]) == pytest.approx(site.sums[PROJECT_OF[name]]), out
        # project folders: members only, for the kernel and for the user's Dask workers
        groups = sorted(unix_group(p) for p, members in PROJECTS.items() if name in members)
        assert v.get("KERNEL_GROUPS") == ",".join(groups), out
        assert v.get("WORKER_GROUPS") == str([",".join(groups)]), out
        # the store is the data service's alone: not even a member opens its files directly
        assert v.get("STORE_ROOT") == "denied", out
        assert v.get("OWN_PROJECT") == "denied", out
        assert v.get("OTHER_PROJECT") == "denied", f"{name} could list another project: {out}"
        assert v.get("OTHER_VOLUME") in ("NotFound", "AccessDenied"), out
        assert v.get("STORE_TMP") == "denied", out
        assert v.get("CATALOG_READ_ONLY") == "True", out
        visible = sorted(p for p, members in PROJECTS.items() if name in members)
        assert v.get("CATALOG_PROJECTS") == ",".join(visible), out
        assert v.get("KERNEL_RLIMIT_AS") == str(8 * 2**30), out
        assert v.get("OTHER_HOME") == "denied", f"{name} could read {other[name]}'s home: {out}"
        assert v.get("OWN_HOME_MODE") == "0o700", out
        assert v.get("DASHBOARD", "").startswith("/services/dask-gateway/clusters/"), out


def test_teaching_notebook_runs_in_a_students_server(logged_in: Site) -> None:
    """Sample notebook 2, cell by cell in a kernel of alice's server, on the course's data."""
    site = logged_in
    t0 = time.monotonic()
    outputs = run_notebook(
        site.stack.url,
        ALICE,
        site.tokens[ALICE],
        NOTEBOOK,
        parameters={"PROJECT": COURSE},
        cafile=site.stack.cafile,
        timeout=300,
    )
    text = "".join(outputs)
    print(f"\nnotebook 2 in {ALICE}'s server: {time.monotonic() - t0:.1f} s")
    assert text.count("✓") == 3, text
    assert f"project: {COURSE} | de-identified: True" in text, text
    assert "you may change the shared data: False" in text, text


def _browser_missing() -> str:
    if not os.path.exists(CHROMIUM):
        return f"needs Debian's chromium at {CHROMIUM}"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "needs the playwright package (pip), not its browser download"
    return ""


def _run_all_until(page: Any, text: str, timeout: float = 300) -> None:
    """Run > Run All Cells in JupyterLab until an output shows ``text``.

    JupyterLab accepts "Run All Cells" before the kernel's connection is up and then silently
    runs nothing, and on a loaded machine a slow kernel start can end in the "Select Kernel"
    dialog.  So: accept that dialog when it is up, run once the status bar says "| Idle", and run
    again if no prompt turned into ``[*]`` or ``[n]`` within a minute.
    """
    started = """() => [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')]
        .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"""
    output = page.locator(".jp-OutputArea-output", has_text=text)
    dialog = page.locator(".jp-Dialog", has_text="Select Kernel")
    idle = page.locator(".jp-StatusBar-Item", has_text="| Idle")
    deadline = time.monotonic() + timeout
    ran_at: float | None = None
    runs = 0
    while time.monotonic() < deadline:
        if output.count():
            return
        if dialog.count():
            dialog.locator(".jp-mod-accept").first.click()
            ran_at = None  # a new kernel: run again
        elif ran_at is None and idle.count():
            page.locator(".lm-MenuBar-item", has_text="Run").first.click()
            page.locator(".lm-Menu-item", has_text="Run All Cells").first.click()
            ran_at, runs = time.monotonic(), runs + 1
        elif ran_at is not None and time.monotonic() - ran_at > 60 and not page.evaluate(started):
            page.keyboard.press("Escape")
            ran_at = None
        time.sleep(1)
    raise AssertionError(f"no output {text!r} after {timeout:.0f} s and {runs} run(s)")


@pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "ok")
def test_browser_logs_in_and_runs_sample_notebook_1(logged_in: Site) -> None:
    """Chromium logs in through the hub's form, opens notebook 1 in JupyterLab, runs it, and
    sees its outputs (and the study browser, once the notebook uses it); every request of the
    page goes to 127.0.0.1."""
    from playwright.sync_api import sync_playwright

    site = logged_in
    account = pwd.getpwnam(ALICE)
    copy = Path(account.pw_dir) / NOTEBOOK_1.name
    shutil.copy(NOTEBOOK_1, copy)
    os.chown(copy, account.pw_uid, account.pw_gid)
    uses_browser_widget = "browse(" in NOTEBOOK_1.read_text()
    external: list[str] = []
    page_errors: list[str] = []

    def on_request(request: Any) -> None:
        url = urlparse(request.url)
        if url.scheme not in ("data", "blob") and url.hostname != "127.0.0.1":
            external.append(request.url)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                ignore_https_errors=True,  # the stack's self-signed certificate
                viewport={"width": 1400, "height": 1000},
            )
            page = context.new_page()
            page.on("request", on_request)
            page.on("pageerror", lambda err: page_errors.append(str(err)))
            try:
                page.goto(site.stack.url + "/hub/login", timeout=60_000)
                page.fill("#username_input", ALICE)
                page.fill("#password_input", site.passwords[ALICE])
                page.click("#login_submit")
                # hub -> spawn page -> (OAuth with her server) -> JupyterLab
                page.wait_for_url(f"**/user/{ALICE}/lab**", timeout=120_000)
                page.goto(
                    f"{site.stack.url}/user/{ALICE}/lab/workspaces/e2e/tree/{NOTEBOOK_1.name}?reset",
                    timeout=60_000,
                )
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
                page.wait_for_selector(
                    ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000
                )
                _run_all_until(page, "most common HU bin")
                if uses_browser_widget:
                    page.locator(".voxelhub-browser").first.wait_for(timeout=120_000)
                page.wait_for_selector(
                    ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000
                )
                page.screenshot(path=str(ARTIFACTS / "notebook1_in_hub.png"), full_page=True)
                news_prompt = page.get_by_text("official Jupyter news").count()
                prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
                outputs = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "notebook1_failure.png"), full_page=True)
                raise
        finally:
            browser.close()
    assert prompts and all(re.search(r"\[\d+\]", t) for t in prompts), prompts
    assert "Traceback" not in outputs and "Error" not in outputs.split("most common")[0], outputs
    assert "window_presets" not in outputs or "window presets" in outputs
    assert not external, f"the page requested hosts other than 127.0.0.1: {external}"
    assert news_prompt == 0, (
        "JupyterLab offers internet news (hub_config/jupyter should disable it)"
    )
    assert not page_errors, f"errors in the page: {page_errors}"


WIDGETS_NOTEBOOK_CELLS = [
    "import os, voxelhub, voxelhub.widgets as vw\n"
    "from voxelhub.roi import threshold\n"
    "cat = voxelhub.open_catalog()              # $VOXELHUB_STORE: the data service\n"
    "row = cat.series(project={project!r}, modality='CT').iloc[0]\n"
    "vol = voxelhub.open_series(row, catalog=cat)\n"
    "mask = threshold(vol, lower=300)           # bone of the phantom, made here\n"
    "print('STORE', os.environ['VOXELHUB_STORE'])\n"
    "print('VOLUME', row.volume_uid, tuple(vol.shape))",
    "vw.view(vol, mask=mask)",
    "vw.view3d(vol, mask=mask, max_voxels=2_000_000)",
    "p = vw.features_panel(cat, series=[row.volume_uid])\n"
    "p.level.value = 2\np.lower.value = 300\np",
    "print('WIDGETS' + '_SHOWN')",
]


def _notebook(cells: list[str]) -> dict[str, Any]:
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "cells": [
            {
                "cell_type": "code",
                "id": f"c{i}",
                "metadata": {},
                "source": src,
                "outputs": [],
                "execution_count": None,
            }
            for i, src in enumerate(cells)
        ],
    }


def _overlay_fraction(png: bytes) -> float:
    """Fraction of pixels tinted red: the slice viewer's mask overlay (its crosshair is green, the
    CT's pixels grey)."""
    import io

    from PIL import Image

    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)
    red = (rgb[..., 0] - rgb[..., 1] > 60) & (rgb[..., 0] - rgb[..., 2] > 30)
    return float(red.mean())


def _picture_stats(png: bytes) -> tuple[int, int]:
    """(number of distinct grey levels, max - min) of a screenshot."""
    import io

    from PIL import Image

    grey = np.asarray(Image.open(io.BytesIO(png)).convert("L"))
    return len(np.unique(grey)), int(grey.max()) - int(grey.min())


@pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "ok")
def test_browser_runs_the_widgets_through_the_data_service(logged_in: Site) -> None:
    """Chromium logs in as alice and runs a notebook that opens a volume of her project through
    the data service and shows the slice viewer, the 3-D view and the feature panel; the panel
    runs an extraction and shows its feature rows.  Selectors and checks as in
    tests/widgets/test_widgets_browser.py."""
    import json

    from playwright.sync_api import sync_playwright

    site = logged_in
    account = pwd.getpwnam(ALICE)
    name = "widgets_through_the_service.ipynb"
    copy = Path(account.pw_dir) / name
    cells = [c.format(project=DEMO) for c in WIDGETS_NOTEBOOK_CELLS]
    copy.write_text(json.dumps(_notebook(cells)))
    os.chown(copy, account.pw_uid, account.pw_gid)
    external: list[str] = []
    page_errors: list[str] = []

    def on_request(request: Any) -> None:
        url = urlparse(request.url)
        if url.scheme not in ("data", "blob") and url.hostname != "127.0.0.1":
            external.append(request.url)

    def shows_full_slice(axis: int) -> str:
        """JS: the plane's canvas holds a full-resolution slice (as the widget test waits)."""
        sel = f".vh-slices canvas[data-axis='{axis}']"
        return (
            f"() => {{ const c = document.querySelector({sel!r}); "
            "return !!c && c.dataset.level === '0'; }"
        )

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1500, "height": 1100}
            )
            page = context.new_page()
            page.on("request", on_request)
            page.on("pageerror", lambda err: page_errors.append(str(err)))
            try:
                page.goto(site.stack.url + "/hub/login", timeout=60_000)
                page.fill("#username_input", ALICE)
                page.fill("#password_input", site.passwords[ALICE])
                page.click("#login_submit")
                page.wait_for_url(f"**/user/{ALICE}/**", timeout=120_000)
                page.goto(
                    f"{site.stack.url}/user/{ALICE}/lab/workspaces/e2ew/tree/{name}?reset",
                    timeout=60_000,
                )
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
                page.wait_for_selector(
                    ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000
                )
                _run_all_until(page, "WIDGETS_SHOWN")
                outputs_text = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
                assert "Traceback" not in outputs_text and "Error" not in outputs_text, outputs_text
                store_url = re.search(r"STORE (\S+)", outputs_text)
                # the slice viewer: three planes at full resolution, read through the service
                slices = page.locator(".vh-slices").first
                slices.wait_for(timeout=120_000)
                for axis in range(3):
                    page.wait_for_function(shows_full_slice(axis), timeout=120_000)
                axial = page.locator(".vh-slices canvas[data-axis='0']").first
                axial.scroll_into_view_if_needed()
                time.sleep(0.5)
                slice_png = axial.screenshot(path=str(ARTIFACTS / "hub_slice_axial.png"))
                slices.screenshot(path=str(ARTIFACTS / "hub_slice_viewer.png"))
                # the 3-D view: ipyniivue's WebGL canvas, drawn
                view3d = page.locator(".voxelhub-volume3d canvas").first
                view3d.wait_for(timeout=120_000)
                view3d.scroll_into_view_if_needed()
                time.sleep(8)  # WebGL on SwiftShader
                view3d_png = view3d.screenshot(path=str(ARTIFACTS / "hub_volume3d.png"))
                # the feature panel: Run, then one row of features for the series
                panel = page.locator(".voxelhub-features").first
                panel.wait_for(timeout=120_000)
                panel.scroll_into_view_if_needed()
                panel.get_by_role("button", name="Run").click()
                rows = panel.locator(".vh-table tr.vh-row")
                # the run's end is in the status line, and its rows (results or errors) drawn
                page.wait_for_function(
                    """() => {
                      const p = document.querySelector('.voxelhub-features');
                      return /run failed/.test(p.innerText) || (/series done/.test(p.innerText)
                        && p.querySelectorAll('.vh-table tr.vh-row, .vh-errors tr').length > 0);
                    }""",
                    timeout=240_000,
                )
                panel_text = panel.inner_text()
                choices = (
                    panel.locator("select[multiple]").first.locator("option").all_inner_texts()
                )
                n_rows = rows.count()
                n_headers = panel.locator(".vh-table th").count()
                panel.screenshot(path=str(ARTIFACTS / "hub_feature_panel.png"))
                page.screenshot(path=str(ARTIFACTS / "widgets_in_hub.png"), full_page=True)
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "widgets_failure.png"), full_page=True)
                raise
        finally:
            browser.close()
    # every read of the kernel went through the data service, not the store's files
    assert store_url and "/services/voxelhub-data" in store_url.group(1), outputs_text
    levels, spread = _picture_stats(slice_png)
    assert levels > 30 and spread > 100, ("slice viewer canvas looks blank", levels, spread)
    levels, spread = _picture_stats(view3d_png)
    assert levels > 30 and spread > 100, ("3-D view canvas looks blank", levels, spread)
    assert _overlay_fraction(slice_png) > 0.005, "no mask overlay in the slice viewer"
    # the panel lists alice's volumes only (the service filters the catalog): bob's is not there
    assert len(choices) == 3 and not any("PAT-1" in c for c in choices), choices
    assert "1 of 1 series done, 0 failed" in panel_text, panel_text
    assert "failed cases" not in panel_text, panel_text
    assert n_rows == 1 and n_headers > 3, (n_rows, n_headers, panel_text)
    assert not external, f"the page requested hosts other than 127.0.0.1: {external}"
    assert not page_errors, f"errors in the page: {page_errors}"


def test_jupyterlab_opens_over_https_with_the_hub_login(logged_in: Site) -> None:
    site = logged_in
    r = site.browsers[ALICE].open_lab()
    assert "JupyterLab" in r.text
    # bob's cookie does not open alice's server
    other = site.browsers[BOB].session.get(site.stack.url + f"/user/{ALICE}/lab", timeout=60)
    assert not other.url.rstrip("/").endswith(f"/user/{ALICE}/lab") or other.status_code == 403
    # the public port speaks TLS only
    with pytest.raises(requests.RequestException):
        requests.get(site.stack.url.replace("https://", "http://") + "/hub/api/", timeout=10)


# dask_gateway 2026.3.0's Gateway.__del__ calls close() again after the loop stopped (harmless)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_gateway_needs_a_hub_token_and_stops_clusters_with_the_server(logged_in: Site) -> None:
    from dask_gateway import Gateway
    from dask_gateway.auth import JupyterHubAuth

    site = logged_in
    gw_port = site.stack.ports["VOXELHUB_GATEWAY_PORT"]
    address = f"http://127.0.0.1:{gw_port}/services/dask-gateway"
    clusters_api = address + "/api/v1/clusters/"
    assert requests.get(clusters_api, timeout=10).status_code == 401
    # an unknown token is refused; dask-gateway-server 2026.3.0 answers 500 here, not 401/403
    bad = requests.get(clusters_api, headers={"Authorization": "jupyterhub nonsense"}, timeout=10)
    assert bad.status_code in (401, 403, 500), bad.status_code
    gateway = Gateway(
        address=address,
        proxy_address=f"gateway://127.0.0.1:{gw_port}",
        auth=JupyterHubAuth(api_token=site.tokens[BOB]),
    )
    try:
        name = gateway.submit()  # a cluster that outlives this client
        assert [c.name for c in gateway.list_clusters()] == [name]
        # stopping bob's server stops his clusters (Spawner.post_stop_hook)
        site.browsers[BOB].api("DELETE", f"/users/{BOB}/server", ok=(202, 204))
        deadline = time.monotonic() + 120
        while gateway.list_clusters() and time.monotonic() < deadline:
            time.sleep(1)
        assert gateway.list_clusters() == [], "bob's cluster survived his server"
    finally:
        gateway.close()
