"""Uploads on the real stack: a curator's zip becomes catalogued volumes; nobody else may send one.

One module-scoped hub with the data service under its own account.  Project A has a curator, an
analyst and a viewer; project B has its own curator.  A zip of a real CT series from
``../shared/data/dicom`` is sent through :meth:`ServiceCatalog.upload` with the curator's hub
token and ends voxel-identical to a folder ingest, the service's upload folder empty; the
analyst, the viewer and B's curator are refused (and audited); unsafe zips are refused with the
reason, a truncated instance is reported, a zip bomb stops at the cap; B's curator cannot read
A's upload's report.

Needs root (unix accounts); a few minutes on 2 cores.
"""

from __future__ import annotations

import io
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.dicom_factory import write_series

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "extensions"))

from voxelhub_hub.client import HubBrowser  # noqa: E402
from voxelhub_hub.project_groups import remove_group  # noqa: E402
from voxelhub_hub.stack import HubStack  # noqa: E402
from voxelhub_hub.system_users import remove_account, remove_managed_group_if_unused  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="unix accounts need root"),
]

SERIES = Path("/work/shared/data/dicom/ct_ge_hispeed_gantry_tilt")
S = secrets.token_hex(3)
ADMIN, CUR, ANA, VIEW, OTHER = (f"vu{k}{S}" for k in ("adm", "cur", "ana", "view", "oth"))
A, B, C = f"upa{S}", f"upb{S}", f"upc{S}"  # C: de-identified
SERVICE_ACCOUNT = f"vhupl{S}"
CAP = 64 << 20  # the service's cap on unpacked bytes in this test
GROUPS = {
    A: [CUR, ANA, VIEW],
    f"{A}:curator": [CUR],
    f"{A}:analyst": [ANA],
    B: [OTHER],
    f"{B}:curator": [OTHER],
    C: [CUR],
    f"{C}:curator": [CUR],
}


class Site:
    def __init__(self, stack: HubStack, state: Path) -> None:
        self.stack, self.state = stack, state
        self.tokens: dict[str, str] = {}
        self.admin_password = ""

    @property
    def uploads_dir(self) -> Path:
        return self.state / "audit" / "uploads"

    def catalog(self, user: str) -> Any:
        import voxelhub

        return voxelhub.open_catalog(
            self.stack.data_url, storage_options={"token": self.tokens[user]}
        )

    def post_zip(self, user: str, project: str, body: bytes) -> requests.Response:
        return requests.post(
            f"{self.stack.data_url}/api/projects/{project}/uploads",
            data=body,
            headers={"Authorization": f"token {self.tokens[user]}"},
            timeout=120,
            verify=self.stack.verify,
        )

    def audit(self, **params: str) -> list[dict[str, Any]]:
        r = requests.get(
            f"{self.stack.data_url}/api/audit",
            params=params,
            headers={"Authorization": f"token {self.tokens[ADMIN]}"},
            timeout=30,
            verify=self.stack.verify,
        )
        assert r.status_code == 200, r.text
        return list(r.json()["records"])


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    from voxelhub import ingest

    state = Path(tempfile.mkdtemp(prefix="vhuploadstate-"))
    os.chmod(state, 0o755)
    stack = HubStack(
        state,
        admins=[ADMIN],
        projects=GROUPS,
        spawner="system",
        tls=True,
        extra_env={
            "VOXELHUB_DATA_USER": SERVICE_ACCOUNT,
            "VOXELHUB_DATA_UPLOAD_MAX_UNPACKED_BYTES": str(CAP),
            "VOXELHUB_DATA_UPLOAD_MAX_FILES": "1000",
        },
    )
    try:
        store = state / "store"
        write_series(state / "seed", slices=4, rows=16, columns=16, seed=3, patient_id="PSEED")
        assert not ingest(state / "seed", store, project=B, progress=False).failed
        stack.store = str(store)
        stack.start(timeout=180)
        site = Site(stack, state)
        admin = HubBrowser(stack.url, stack.verify)
        password = secrets.token_urlsafe(18)
        admin.signup(ADMIN, password)
        admin.login(ADMIN, password, next_url="/hub/home")
        site.admin_password = password
        for group, members in GROUPS.items():
            admin.api("POST", f"/groups/{group}/users", json={"users": members}, ok=(200, 201))
        for name in (ADMIN, CUR, ANA, VIEW, OTHER):
            body = {"note": "upload test", "expires_in": 3600}
            site.tokens[name] = admin.api("POST", f"/users/{name}/tokens", json=body)["token"]
        yield site
    finally:
        stack.stop()
        for name in (ADMIN, CUR, ANA, VIEW, OTHER):
            remove_account(name)
        remove_managed_group_if_unused()
        subprocess.run(["userdel", SERVICE_ACCOUNT], capture_output=True, check=False)
        subprocess.run(["groupdel", SERVICE_ACCOUNT], capture_output=True, check=False)
        for group in GROUPS:
            remove_group(group)
        shutil.rmtree(state, ignore_errors=True)


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buf.getvalue()


def _series_files() -> dict[str, bytes]:
    return {f"scan/{p.name}": p.read_bytes() for p in sorted(SERIES.glob("*.dcm"))}


def test_a_curators_zip_ends_as_the_volume_a_folder_ingest_makes(
    site: Site, tmp_path: Path
) -> None:
    from voxelhub import ingest, open_catalog
    from voxelhub.uploads import UploadState

    files = _series_files()
    truncated = "scan/" + sorted(SERIES.glob("*.dcm"))[0].name
    files["scan/cut.dcm"] = files[truncated][: len(files[truncated]) // 2]  # a cut copy
    files["notes.txt"] = b"not DICOM"
    zip_path = tmp_path / "series.zip"
    zip_path.write_bytes(_zip(files))
    seen: list[UploadState] = []
    report = site.catalog(CUR).upload(
        zip_path, project=A, on_progress=lambda r: seen.append(r.state)
    )
    assert report.state is UploadState.DONE, report.summary()
    assert seen[-1] is UploadState.DONE
    assert report.files == len(files) and report.checked == len(files)
    assert len(report.volumes) == 1, report.summary()
    reasons = {r["file"]: r["reason"] for r in report.rejected}
    assert set(reasons) == {"scan/cut.dcm", "notes.txt"}, reasons
    assert "truncated" in reasons["scan/cut.dcm"]
    # voxel-identical to ingesting the folder itself
    local = tmp_path / "store"
    assert not ingest(SERIES, local, project=A, progress=False).failed
    reference = open_catalog(local)
    (ref_uid,) = reference.series().volume_uid
    expected = np.asarray(reference.open_series(ref_uid))
    got = np.asarray(site.catalog(ANA).open_series(report.volumes[0]))
    np.testing.assert_array_equal(got, expected)
    assert report.volumes[0] in set(site.catalog(VIEW).series(project=A).volume_uid)
    # the service kept nothing of the upload, and it was audited with the result
    assert list(site.uploads_dir.iterdir()) == []
    assert stat.S_IMODE(site.uploads_dir.stat().st_mode) == 0o700
    records = site.audit(user=CUR, action="upload.ingest")
    assert records and records[-1]["decision"] == "allow"
    assert report.id in str(records[-1]["detail"])
    # the uploader reads its report; B's curator may not, an unknown id is 404
    assert site.catalog(CUR).upload_status(report.id).state is UploadState.DONE
    from voxelhub.errors import AccessDenied, NotFound

    with pytest.raises(AccessDenied, match="not a member"):
        site.catalog(OTHER).upload_status(report.id)
    with pytest.raises(NotFound):
        site.catalog(OTHER).upload_status("no-such-upload")
    assert any(r["decision"] == "deny" for r in site.audit(user=OTHER, action="upload.read"))


def test_a_deidentified_projects_upload_names_nothing_of_the_patient(site: Site) -> None:
    """Into a de-identified project: the catalog holds pseudonyms, the report names rejected
    files by position (their names in the zip carry the patient ID), and so does the trail."""
    import json

    import pydicom

    from voxelhub.uploads import UploadState

    first = sorted(SERIES.glob("*.dcm"))[0]
    header = pydicom.dcmread(first, stop_before_pixels=True)
    patient, study = str(header.PatientID), str(header.StudyInstanceUID)
    curator = site.catalog(CUR)
    assert curator.set_project_settings(C, deidentify=True).deidentify
    files = {f"{patient}/{name.split('/')[-1]}": data for name, data in _series_files().items()}
    files[f"{patient}/notes.txt"] = f"patient {patient}".encode()
    report = curator.upload(_zip(files), project=C)
    assert report.state is UploadState.DONE and len(report.volumes) == 1, report.summary()
    assert [r["file"] for r in report.rejected] == [f"file {len(files)} of the zip"]
    assert patient not in json.dumps(report.rejected)
    frame = curator.series(project=C)
    assert patient not in set(frame.patient_id) and study not in set(frame.study_uid)
    trail = json.dumps(site.audit(user=CUR, project=C))
    assert "upload.ingest" in trail and patient not in trail and study not in trail
    assert list(site.uploads_dir.iterdir()) == []


def test_a_folder_is_zipped_on_the_fly(site: Site, tmp_path: Path) -> None:
    from voxelhub.uploads import UploadState

    write_series(tmp_path / "new", slices=5, rows=20, columns=20, seed=7, patient_id="PNEW")
    report = site.catalog(CUR).upload(tmp_path / "new", project=A)
    assert report.state is UploadState.DONE and len(report.volumes) == 1, report.summary()
    assert report.rejected == []


@pytest.mark.parametrize("user", [ANA, VIEW, OTHER])
def test_only_curators_upload(site: Site, user: str) -> None:
    r = site.post_zip(user, A, _zip({"a.dcm": (SERIES / "01.dcm").read_bytes()}))
    assert r.status_code == 403, r.text
    assert ("not a member" if user == OTHER else "needs curator") in r.json()["message"]
    denied = site.audit(user=user, action="upload.create")
    assert denied and denied[-1]["decision"] == "deny"
    assert list(site.uploads_dir.iterdir()) == []


def _symlink_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        info = zipfile.ZipInfo("link.dcm")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/shadow")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_zip({"../../etc/cron.d/x": b"x"}), "unsafe name"),
        (_zip({"/abs/x.dcm": b"x"}), "unsafe name"),
        (_symlink_zip(), "symbolic link"),
        (b"PK\x03\x04 not really a zip", "not a zip"),
        (_zip({f"f{i}.dcm": b"" for i in range(1001)}), "may hold 1000"),
        (_zip({"bomb.dcm": b"\0" * (CAP + 1)}), f"an upload may unpack to {CAP}"),
    ],
    ids=["dotdot", "absolute", "symlink", "garbage", "too-many-files", "bomb"],
)
def test_unsafe_zips_are_refused_with_the_reason(site: Site, body: bytes, message: str) -> None:
    r = site.post_zip(CUR, A, body)
    assert r.status_code == 400, r.text
    assert message in r.json()["message"]
    assert list(site.uploads_dir.iterdir()) == []


def test_a_zip_whose_directory_lies_fails_with_the_reason(site: Site) -> None:
    """A member whose directory entry claims 1 KiB but inflates to the cap and more: the
    directory check passes, unpacking finds the lie and the upload fails naming the member."""
    from voxelhub.uploads import UploadState

    body = bytearray(_zip({"bomb.dcm": b"\0" * (CAP + (1 << 20))}))
    central = body.rfind(b"PK\x01\x02")
    body[central + 24 : central + 28] = (1024).to_bytes(4, "little")  # uncompressed size
    r = site.post_zip(CUR, A, bytes(body))
    assert r.status_code == 202, r.text
    report = site.catalog(CUR).upload_status(r.json()["id"])
    while not report.state.finished:
        report = site.catalog(CUR).upload_status(report.id)
    assert report.state is UploadState.FAILED
    assert "'bomb.dcm' in the zip" in report.message, report.message
    assert report.volumes == []
    assert list(site.uploads_dir.iterdir()) == []


CHROMIUM = "/usr/bin/chromium"  # Debian's package; never `playwright install`
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update"]  # fmt: skip
ARTIFACTS = REPO / "tests" / "artifacts" / "hub"
PANEL_CELLS = [
    "import voxelhub.widgets as vw\npanel = vw.upload_panel()   # the data service, $VOXELHUB_STORE\n"
    "panel",
    "print('PANEL' + '_SHOWN')",
]


def _browser_missing() -> str:
    if not os.path.exists(CHROMIUM):
        return f"needs Debian's chromium at {CHROMIUM}"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "needs the playwright package (pip), not its browser download"
    return ""


@pytest.mark.skipif(bool(_browser_missing()), reason=_browser_missing() or "ok")
def test_browser_uploads_a_zip_through_the_panel(site: Site, tmp_path: Path) -> None:
    """Chromium logs in as the curator, opens a notebook showing UploadPanel, chooses a zip in
    the file input, presses Upload, and the report names the catalogued volume."""
    import json
    import pwd

    from playwright.sync_api import sync_playwright

    from tests.hub.test_hub_end_to_end import _notebook, _run_all_until

    password = secrets.token_urlsafe(18)
    hub = HubBrowser(site.stack.url, site.stack.verify)
    hub.signup(CUR, password)
    admin = HubBrowser(site.stack.url, site.stack.verify)
    admin.login(ADMIN, site.admin_password)
    admin.approve(CUR)
    hub.login(CUR, password)  # spawns her server (and her unix account)
    hub.wait_for_server(timeout=240)
    account = pwd.getpwnam(CUR)
    name = "upload.ipynb"
    notebook = Path(account.pw_dir) / name
    notebook.write_text(json.dumps(_notebook(PANEL_CELLS)))
    os.chown(notebook, account.pw_uid, account.pw_gid)
    write_series(tmp_path / "scan", slices=6, rows=32, columns=32, seed=21, patient_id="PWEB")
    zip_path = tmp_path / "scan.zip"
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for f in sorted((tmp_path / "scan").rglob("*")):
            if f.is_file():
                archive.write(f, f.relative_to(tmp_path))
    before = set(site.catalog(CUR).series(project=A).volume_uid)
    page_errors: list[str] = []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(
                ignore_https_errors=True, viewport={"width": 1400, "height": 1000}
            )
            page = context.new_page()
            page.on("pageerror", lambda err: page_errors.append(str(err)))
            try:
                page.goto(site.stack.url + "/hub/login", timeout=60_000)
                page.fill("#username_input", CUR)
                page.fill("#password_input", password)
                page.click("#login_submit")
                page.wait_for_url(f"**/user/{CUR}/**", timeout=120_000)
                page.goto(
                    f"{site.stack.url}/user/{CUR}/lab/workspaces/up/tree/{name}?reset",
                    timeout=60_000,
                )
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
                _run_all_until(page, "PANEL_SHOWN")
                panel = page.locator(".voxelhub-upload").first
                panel.wait_for(timeout=120_000)
                options = panel.locator("select option").all_inner_texts()
                # ipywidgets' FileUpload keeps its <input type=file> out of the page and clicks
                # it from its button: the chooser it opens is given the zip
                with page.expect_file_chooser() as chooser:
                    panel.locator(".widget-upload").click()
                chooser.value.set_files(str(zip_path))
                panel.get_by_role("button", name="Upload").click()
                report = panel.locator(".voxelhub-upload-report")
                report.wait_for(timeout=240_000)
                report_text = report.inner_text()
                status_text = panel.locator(".voxelhub-upload-status").inner_text()
                panel.screenshot(path=str(ARTIFACTS / "upload_panel.png"))
            except Exception:
                page.screenshot(path=str(ARTIFACTS / "upload_failure.png"), full_page=True)
                raise
        finally:
            browser.close()
    assert options == sorted([A, C]), options  # her curator projects only (A is chosen)
    after = set(site.catalog(CUR).series(project=A).volume_uid)
    (new,) = after - before
    assert new in report_text and "written" in report_text, report_text
    assert ": done;" in status_text and "1 volume(s) written" in status_text, status_text
    assert list(site.uploads_dir.iterdir()) == []
    assert not page_errors, page_errors


def test_voxelhub_upload_cli(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``voxelhub upload`` with a hub token: the report and exit 0 for the curator; the
    analyst's refusal in one line with exit 2."""
    from voxelhub.cli import main

    write_series(tmp_path / "cli", slices=4, rows=16, columns=16, seed=31, patient_id="PCLI")
    command = ["upload", str(tmp_path / "cli"), "--project", A, "--store", site.stack.data_url]
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", site.tokens[CUR])
    assert main(command) == 0
    out = capsys.readouterr()
    assert ": done; 1 volume(s) written" in out.out, out
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", site.tokens[ANA])
    assert main(command) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("voxelhub: error:") and "needs curator" in err, err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_stow_rs_into_a_project(site: Site, tmp_path: Path) -> None:
    """dicomweb-client's STOW-RS as B's curator: the series is catalogued, a cut instance is
    in FailedSOPSequence (202); an analyst of A is refused (403) and audited."""
    import pydicom
    from dicomweb_client.api import DICOMwebClient

    from voxelhub import ingest, open_catalog

    datasets = [pydicom.dcmread(p) for p in sorted(SERIES.glob("*.dcm"))]
    cut = pydicom.dcmread(sorted(SERIES.glob("*.dcm"))[0])
    cut.SOPInstanceUID = pydicom.uid.generate_uid()  # another instance, cut in its pixels
    cut.PixelData = cut.PixelData[: len(cut.PixelData) // 2]

    def client(user: str, project: str) -> DICOMwebClient:
        session = requests.Session()
        session.verify = site.stack.verify
        session.headers["Authorization"] = f"token {site.tokens[user]}"
        return DICOMwebClient(f"{site.stack.data_url}/api/projects/{project}", session=session)

    before = set(site.catalog(OTHER).series(project=B).volume_uid)
    answer = client(OTHER, B).store_instances([*datasets, cut])
    referenced = answer.get("ReferencedSOPSequence", [])
    failed = answer.get("FailedSOPSequence", [])
    assert len(referenced) == len(datasets), answer
    assert [str(f.ReferencedSOPInstanceUID) for f in failed] == [cut.SOPInstanceUID]
    assert int(failed[0].FailureReason) == 0xC000
    (new,) = set(site.catalog(OTHER).series(project=B).volume_uid) - before
    assert not ingest(SERIES, tmp_path / "store", project=B, progress=False).failed
    reference = open_catalog(tmp_path / "store")
    (ref_uid,) = reference.series().volume_uid
    np.testing.assert_array_equal(
        np.asarray(site.catalog(OTHER).open_series(new)),
        np.asarray(reference.open_series(ref_uid)),
    )
    assert list(site.uploads_dir.iterdir()) == []
    with pytest.raises(requests.HTTPError) as refused:
        client(ANA, A).store_instances(datasets[:1])
    assert refused.value.response.status_code == 403
    assert "needs curator" in refused.value.response.json()["message"]
    denied = site.audit(user=ANA, action="upload.create")
    assert any("stow-rs" in str(r["detail"]) for r in denied if r["decision"] == "deny")
