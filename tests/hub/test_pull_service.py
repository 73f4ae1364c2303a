"""``voxelhub pull`` on the real stack (issue 11): the data service pulls for curators.

One module-scoped hub (the data service as a managed service under its own unix account) and a
second site's archive (Orthanc + DICOMweb in a network namespace, loaded by STOW-RS with a real
series from ``../shared/data/dicom``), the only server on the service's allow-list, its
credentials in a 0600 file of the service's.  ``lung``: alice views, bob analyses, carol
curates; dave curates ``brain`` (de-identified) only.  Users call the same client code a kernel
does (``voxelhub pull --store <service URL>`` with their hub token, ``voxelhub.dicomweb.pull``),
and the admin reads the audit trail through the service.

Needs root (unix accounts, network namespaces) and Debian's orthanc-dicomweb.
"""

from __future__ import annotations

import json
import os
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

import numpy as np
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid

from tests.dicom_factory import write_series
from tests.dicom_net.archive import USER, Archive, dicom_files, header, running_archive
from tests.dicom_net.conftest import DICOM

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "extensions"))

from voxelhub_hub.client import HubBrowser  # noqa: E402
from voxelhub_hub.project_groups import remove_group  # noqa: E402
from voxelhub_hub.stack import HubStack  # noqa: E402
from voxelhub_hub.system_users import remove_account, remove_managed_group_if_unused  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="unix accounts and namespaces need root"),
]

S = secrets.token_hex(3)
ADMIN, ALICE, BOB, CAROL, DAVE = f"vpadm{S}", f"vpa{S}", f"vpb{S}", f"vpc{S}", f"vpd{S}"
LUNG, BRAIN, COHORT = f"lung{S}", f"brain{S}", f"cohort{S}"
GROUPS = {
    LUNG: [ALICE, BOB, CAROL],
    f"{LUNG}:analyst": [BOB],
    f"{LUNG}:curator": [CAROL],
    BRAIN: [DAVE],
    f"{BRAIN}:curator": [DAVE],
    COHORT: [ALICE, CAROL],
    f"{COHORT}:curator": [CAROL],
}
SERVICE_ACCOUNT = f"vhdpull{S}"
SERIES = DICOM / "mr_ge_mprage_3d_t1"  # 130 instances
PATIENT = str(header(dicom_files(SERIES)[0]).PatientID)


class Site:
    def __init__(self, stack: HubStack, state: Path, archive: Archive) -> None:
        self.stack, self.state, self.archive = stack, state, archive
        self.tokens: dict[str, str] = {}

    def location(self, user: str) -> Any:
        from voxelhub.store.location import ServiceLocation

        return ServiceLocation(self.stack.data_url, {"token": self.tokens[user]})

    def catalog(self, user: str) -> Any:
        import voxelhub

        return voxelhub.open_catalog(
            self.stack.data_url, storage_options={"token": self.tokens[user]}
        )

    def api(self, method: str, path: str, user: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"token {self.tokens[user]}"}
        return requests.request(
            method, self.stack.data_url + "/api/" + path, headers=headers, timeout=60, **kw
        )

    def audit(self, **params: str) -> list[dict[str, Any]]:
        r = self.api("GET", "audit", ADMIN, params=params)
        assert r.status_code == 200, r.text
        return list(r.json()["records"])


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    from voxelhub import ingest

    state = Path(tempfile.mkdtemp(prefix="vhpullhub-"))
    os.chmod(state, 0o755)
    with running_archive(250 + secrets.randbelow(5), [SERIES]) as archive:
        credentials = state / "dicomweb-credentials.json"
        credentials.write_text(
            json.dumps({archive.url: {"user": USER, "password": archive.password}})
        )
        credentials.chmod(0o600)
        stack = HubStack(
            state,
            admins=[ADMIN],
            projects=GROUPS,
            spawner="system",
            tls=True,
            extra_env={
                "VOXELHUB_DATA_USER": SERVICE_ACCOUNT,
                "VOXELHUB_DATA_DICOMWEB_SERVERS": archive.url,
                "VOXELHUB_DATA_DICOMWEB_CREDENTIALS_FILE": str(credentials),
            },
        )
        try:
            store = state / "store"
            write_series(state / "first", slices=6, rows=16, columns=16, seed=3, patient_id="P0")
            assert not ingest(state / "first", store, project=LUNG, progress=False).failed
            stack.store = str(store)
            stack.start(timeout=180)
            site = Site(stack, state, archive)
            admin = HubBrowser(stack.url, stack.verify)
            password = secrets.token_urlsafe(18)
            admin.signup(ADMIN, password)
            admin.login(ADMIN, password, next_url="/hub/home")
            for group, members in GROUPS.items():
                admin.api("POST", f"/groups/{group}/users", json={"users": members}, ok=(200, 201))
            for name in (ADMIN, ALICE, BOB, CAROL, DAVE):
                body = {"note": "pull service test", "expires_in": 3600}
                site.tokens[name] = admin.api("POST", f"/users/{name}/tokens", json=body)["token"]
            yield site
        finally:
            stack.stop()
            for name in (ADMIN, ALICE, BOB, CAROL, DAVE):
                remove_account(name)
            remove_managed_group_if_unused()
            subprocess.run(["userdel", SERVICE_ACCOUNT], capture_output=True, check=False)
            subprocess.run(["groupdel", SERVICE_ACCOUNT], capture_output=True, check=False)
            for group in GROUPS:
                remove_group(group)
            shutil.rmtree(state, ignore_errors=True)


def _cli_pull(site: Site, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``voxelhub pull`` as a kernel's terminal runs it: the store is the service's URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOXELHUB_DICOMWEB_")}
    env["JUPYTERHUB_API_TOKEN"] = site.tokens[user]
    return subprocess.run(
        [sys.executable, "-m", "voxelhub.cli", "pull", site.archive.url,
         "--store", site.stack.data_url, "--quiet", *args],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip


def test_a_curator_pulls_through_the_service(site: Site, tmp_path: Path) -> None:
    from voxelhub import ingest, open_catalog

    done = _cli_pull(site, CAROL, "--project", LUNG, "--patient-id", PATIENT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "130 instance(s): 130 fetched" in done.stdout, done.stdout
    assert site.archive.password not in done.stdout + done.stderr
    # catalogued in lung, voxel for voxel what a folder ingest of the same files gives
    reference = tmp_path / "reference"
    assert not ingest(SERIES, reference, project=LUNG, progress=False).failed
    ref = open_catalog(reference)
    cat = site.catalog(CAROL)
    frame = cat.series(project=LUNG)
    pulled = frame[frame.patient_id == PATIENT]
    want = ref.series(project=LUNG)
    assert sorted(pulled.volume_uid) == sorted(want.volume_uid) and len(pulled) >= 1
    for uid in want.volume_uid:
        a, b = np.asarray(cat.open_series(uid)), np.asarray(ref.open_series(uid))
        assert a.shape == b.shape and np.array_equal(a, b)
    ref.close()
    # the staged instances are gone from the service's private folder once in the store
    staging = site.state / "audit" / "pulls"
    assert staging.is_dir() and not any(staging.iterdir())
    assert (staging.stat().st_mode & 0o777) == 0o700
    # the trail: the request allowed, then what it fetched
    asked = site.audit(user=CAROL, action="dicom.pull")
    assert asked and asked[-1]["decision"] == "allow" and asked[-1]["project"] == LUNG
    assert asked[-1]["detail"]["server"] == site.archive.url
    result = site.audit(user=CAROL, action="dicom.pull.result")
    assert result and result[-1]["decision"] == "allow", result
    detail = result[-1]["detail"]
    assert detail["fetched"] == 130 and sorted(detail["volumes"]) == sorted(want.volume_uid)
    assert result[-1]["count"] == 130 and result[-1]["nbytes"] > 0
    assert site.archive.password not in (site.state / "audit" / "audit.log").read_text()


def test_viewers_analysts_and_outsiders_are_refused_and_audited(site: Site) -> None:
    from voxelhub.dicomweb import StudyQuery, pull
    from voxelhub.errors import AccessDenied

    for user in (ALICE, BOB, DAVE):
        with pytest.raises(AccessDenied, match=r"dicom\.pull needs curator|not a member"):
            pull(site.archive.url, site.location(user), StudyQuery(patient_id=PATIENT),
                 project=LUNG, progress=False)  # fmt: skip
        denied = site.audit(user=user, action="dicom.pull")
        assert denied and denied[-1]["decision"] == "deny" and denied[-1]["project"] == LUNG
    # the CLI says so and exits 2
    done = _cli_pull(site, ALICE, "--project", LUNG, "--patient-id", PATIENT)
    assert done.returncode == 2 and "refused" in done.stderr + done.stdout
    # nothing arrived from any of them
    frame = site.catalog(CAROL).series(project=LUNG)
    assert len(frame[frame.patient_id == PATIENT]) == 1


def test_only_allowed_servers_and_never_a_callers_credentials(site: Site) -> None:
    from voxelhub.dicomweb import Credentials, PullError, StudyQuery, pull
    from voxelhub.errors import AccessDenied, CatalogError

    query = StudyQuery(patient_id=PATIENT)
    # the hub's own API, a cloud metadata address: the service must not be made to fetch them
    for url in (site.stack.url + "/hub/api", "http://169.254.169.254/latest"):
        with pytest.raises(AccessDenied, match="not one of the DICOMweb servers this site"):
            pull(url, site.location(CAROL), query, project=LUNG, progress=False)
    refused = [r for r in site.audit(user=CAROL, action="dicom.pull") if r["decision"] == "deny"]
    assert len(refused) >= 2 and refused[-1]["detail"]["kind"] == "ServerNotAllowed"
    # an allowed server's address with a user part, or secrets in the body: refused, not kept
    secret = secrets.token_urlsafe(12)
    bad = site.archive.url.replace("http://", f"http://{USER}:{secret}@")
    r = site.api(
        "POST", f"projects/{LUNG}/pulls", CAROL, json={"url": bad, "query": {"patient_id": PATIENT}}
    )
    assert r.status_code == 400 and "user part" in r.json()["message"]
    body = {"url": site.archive.url, "query": {"patient_id": PATIENT}, "password": secret}
    r = site.api("POST", f"projects/{LUNG}/pulls", CAROL, json=body)
    assert r.status_code == 400 and "credentials" in r.json()["message"]
    assert secret not in (site.state / "audit" / "audit.log").read_text()
    # the client does not send them either
    with pytest.raises(PullError, match="credentials the site configured"):
        pull(site.archive.url, site.location(CAROL), query, project=LUNG,
             credentials=Credentials(USER, secret), progress=False)  # fmt: skip
    # bad input: a clear 400, never a 500
    for body in ({"url": site.archive.url, "query": {}}, {"url": site.archive.url},
                 {"url": site.archive.url, "query": {"patient_id": PATIENT}, "workers": 0},
                 {"url": site.archive.url, "query": {"nonsense": "x"}}):  # fmt: skip
        r = site.api("POST", f"projects/{LUNG}/pulls", CAROL, json=body)
        assert r.status_code == 400, (body, r.text)
    r = site.api("POST", f"projects/{LUNG}/pulls", CAROL, data=b"not json")
    assert r.status_code == 400 and "not JSON" in r.json()["message"]
    with pytest.raises(CatalogError, match="400"):
        site.catalog(CAROL).start_pull(LUNG, {"url": site.archive.url, "query": {"x": "1"}})


def test_a_pulls_status_is_for_its_requester_and_the_projects_curators(site: Site) -> None:
    cat = site.catalog(CAROL)
    started = cat.start_pull(LUNG, {"url": site.archive.url, "query": {"patient_id": PATIENT}})
    pull_id = started["id"]
    for user in (ALICE, BOB, DAVE):  # a viewer, an analyst, another project's curator
        r = site.api("GET", f"pulls/{pull_id}", user)
        assert r.status_code == 403, (user, r.text)
        denied = site.audit(user=user, action="dicom.pull.read")
        assert denied[-1]["decision"] == "deny" and denied[-1]["detail"]["pull"] == pull_id
    assert site.api("GET", "pulls/no-such-pull", CAROL).status_code == 404
    deadline = time.monotonic() + 300
    while (state := cat.pull_status(pull_id))["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, state
        time.sleep(0.5)
    assert state["state"] == "done" and state["user"] == CAROL, state
    assert str(site.state) not in json.dumps(state)  # the service's folders stay its own
    # the same pull again: resumable and idempotent, nothing catalogued twice
    assert state["report"]["ingest"]["unchanged"] and not state["report"]["ingest"]["written"]
    r = site.api("GET", f"pulls/{pull_id}", ADMIN)
    assert r.status_code == 200 and r.json()["state"] == "done"


def test_a_deidentified_projects_pull_names_no_patient_in_the_trail(site: Site) -> None:
    from voxelhub.dicomweb import StudyQuery, pull

    # a study of its own with a patient ID found nowhere else (this one's is "dicom")
    patient, study, series = f"PULLDEID{S}", generate_uid(), generate_uid()
    datasets = []
    for path in dicom_files(SERIES)[:24]:
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.PatientName = patient, f"DOE^{patient}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        datasets.append(ds)
    site.archive.stow(datasets)
    cat = site.catalog(DAVE)
    cat.set_project_settings(BRAIN, deidentify=True)
    seen: list[tuple[int, int]] = []
    report = pull(site.archive.url, site.location(DAVE), StudyQuery(patient_id=patient),
                  project=BRAIN, progress=False, on_progress=lambda d, t: seen.append((d, t)))  # fmt: skip
    assert report.exit_code == 0, report.summary()
    assert report.fetched == 24 and report.ingest is not None and report.ingest.paths_withheld
    assert seen and seen[-1] == (24, 24)
    rows = cat.series(project=BRAIN)
    assert len(rows) == 1 and patient not in set(rows.patient_id)
    records = site.audit(user=DAVE, project=BRAIN, action="dicom.pull") + site.audit(
        user=DAVE, project=BRAIN, action="dicom.pull.result"
    )
    assert {r["decision"] for r in records} == {"allow"} and len(records) == 2
    assert patient not in json.dumps(records) and "query" not in records[0]["detail"]
    assert records[1]["detail"]["fetched"] == 24 and records[1]["detail"]["volumes"]
    assert patient not in (site.state / "audit" / "audit.log").read_text()


def test_a_curator_imports_a_cohort_through_the_service(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``voxelhub cohort import`` with the service's URL as the store: the service verifies
    and imports the package for curators, refuses the rest, and audits both."""
    import io
    import tarfile

    from voxelhub import ingest, open_catalog
    from voxelhub.cohort import IdentifiableData, TamperedPackage, export_cohort, import_cohort
    from voxelhub.errors import AccessDenied

    monkeypatch.setenv("VOXELHUB_SECRETS_DIR", str(tmp_path / "secrets"))
    source = tmp_path / "source"
    write_series(tmp_path / "dicom", slices=6, rows=16, columns=16, seed=7, patient_id="PCOH")
    assert not ingest(tmp_path / "dicom", source, project="trial", deidentify=True,
                      progress=False).failed  # fmt: skip
    package = tmp_path / "package"
    export_cohort(str(source), str(package), project="trial", site="site-a")
    (uid,) = open_catalog(source).series(project="trial").volume_uid
    with pytest.raises(AccessDenied, match=r"cohort\.import needs curator"):
        import_cohort(str(package), site.location(ALICE), project=COHORT)
    assert site.audit(user=ALICE, action="cohort.import")[-1]["decision"] == "deny"
    # the CLI, as in a kernel's terminal
    env = {**os.environ, "JUPYTERHUB_API_TOKEN": site.tokens[CAROL]}
    done = subprocess.run(
        [sys.executable, "-m", "voxelhub.cli", "cohort", "import", str(package),
         "--store", site.stack.data_url, "--project", COHORT],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 volume(s) imported" in done.stdout, done.stdout
    cat = site.catalog(CAROL)
    assert list(cat.series(project=COHORT).volume_uid) == [uid]
    ref = open_catalog(source)
    assert np.array_equal(np.asarray(cat.open_series(uid)), np.asarray(ref.open_series(uid)))
    again = import_cohort(str(package), site.location(CAROL), project=COHORT)
    assert again.unchanged == [uid] and not again.written  # idempotent
    # a tampered package is refused with the object named; identifiable projects refuse it
    objects = sorted(p for p in package.rglob("*") if p.is_file() and "zarr" in str(p))
    victim = objects[-1]
    victim.write_bytes(victim.read_bytes() + b"x")
    rel = str(victim.relative_to(package))
    with pytest.raises(TamperedPackage, match=re.escape(rel)) as tampered:
        import_cohort(str(package), site.location(CAROL), project=COHORT)
    assert tampered.value.object == rel
    victim.write_bytes(victim.read_bytes()[:-1])
    with pytest.raises(IdentifiableData, match="not de-identified"):
        import_cohort(str(package), site.location(CAROL), project=LUNG)
    # a tar that climbs out of the service's folder: 400, nothing written
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w") as tar:
        info = tarfile.TarInfo("../escaped.json")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    r = site.api("POST", f"projects/{COHORT}/cohorts", CAROL, data=evil.getvalue())
    assert r.status_code == 400 and r.json()["kind"] == "UnsafeMember", r.text
    assert not (site.state / "audit" / "escaped.json").exists()
    r = site.api("POST", f"projects/{COHORT}/cohorts", CAROL, data=b"not a tar")
    assert r.status_code == 400 and r.json()["kind"] == "NotATar", r.text
    # the service's private folder is empty again; the trail has each decision
    assert not any((site.state / "audit" / "cohorts").iterdir())
    records = site.audit(user=CAROL, action="cohort.import")
    allowed = [r for r in records if r["decision"] == "allow"]
    assert len(allowed) == 2 and allowed[0]["detail"]["written"] == [uid]
    assert allowed[0]["detail"]["source_site"] == "site-a"
    kinds = [r["detail"]["kind"] for r in records if r["decision"] == "deny"]
    assert kinds == ["TamperedPackage", "IdentifiableData", "UnsafeMember", "NotATar"]


def test_a_curator_exports_a_deidentified_cohort_through_the_service(
    site: Site, tmp_path: Path
) -> None:
    """``voxelhub cohort export`` with the service's URL as the store: curators only (the
    package leaves the site), identifiable projects refused, the export audited."""
    from voxelhub.cohort import IdentifiableProject, export_cohort, import_cohort
    from voxelhub.errors import AccessDenied

    uids = sorted(site.catalog(DAVE).series(project=BRAIN).volume_uid)
    assert uids  # the de-identified pull above brought them
    env = {**os.environ, "JUPYTERHUB_API_TOKEN": site.tokens[DAVE]}
    target = tmp_path / "package"
    done = subprocess.run(
        [sys.executable, "-m", "voxelhub.cli", "cohort", "export", str(target),
         "--store", site.stack.data_url, "--project", BRAIN, "--site", "site-b"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    sha = done.stdout.split("manifest sha256 ")[1].split()[0]
    # the package is whole: a fresh store imports it, voxel for voxel what the service serves
    imported = import_cohort(str(target), tmp_path / "fresh", project="received")
    assert sorted(imported.written) == uids and imported.provenance["source_site"] == "site-b"
    from voxelhub import open_catalog

    fresh = open_catalog(tmp_path / "fresh")
    for uid in uids:
        got = np.asarray(fresh.open_series(uid))
        assert np.array_equal(got, np.asarray(site.catalog(DAVE).open_series(uid)))
    # a viewer or outsider may not take data out of the site; an identifiable project is refused
    with pytest.raises(AccessDenied, match="not a member"):
        export_cohort(site.location(ALICE), str(tmp_path / "a"), project=BRAIN, site="x")
    with pytest.raises(AccessDenied, match=r"cohort\.export needs curator"):
        export_cohort(site.location(ALICE), str(tmp_path / "b"), project=COHORT, site="x")
    with pytest.raises(IdentifiableProject, match="not de-identified"):
        export_cohort(site.location(CAROL), str(tmp_path / "c"), project=LUNG, site="x")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
    records = site.audit(user=DAVE, action="cohort.export")
    assert records[-1]["decision"] == "allow" and records[-1]["count"] == len(uids)
    assert records[-1]["detail"]["manifest_sha256"] == sha
    denied = site.audit(user=CAROL, action="cohort.export")
    assert (
        denied[-1]["decision"] == "deny" and denied[-1]["detail"]["kind"] == "IdentifiableProject"
    )
    assert len(site.audit(user=ALICE, action="cohort.export")) == 2
    assert not any((site.state / "audit" / "cohorts").iterdir())


def test_a_dicomweb_credentials_file_others_may_read_is_refused(tmp_path: Path) -> None:
    """Neither the hub nor the service takes the servers' credentials from a file anyone else
    may read (its secrets may have leaked); the message names the setting, never a secret."""
    from voxelhub_data.pulls import BadCredentialsFile, load_credentials
    from voxelhub_hub.data_service import store_environment

    secret = secrets.token_urlsafe(12)
    path = tmp_path / "dicomweb.json"
    path.write_text(json.dumps({"http://a/dicom-web": {"user": "u", "password": secret}}))
    path.chmod(0o644)
    setting = "VOXELHUB_DATA_DICOMWEB_CREDENTIALS_FILE"
    with pytest.raises(SystemExit, match=f"{setting} .* is readable by others") as refused:
        store_environment(str(tmp_path / "store"), SERVICE_ACCOUNT, {setting: str(path)})
    assert secret not in str(refused.value)
    with pytest.raises(BadCredentialsFile, match="readable by others") as bad:
        load_credentials(str(path))
    assert secret not in str(bad.value)
    path.chmod(0o600)
    (credentials,) = load_credentials(str(path)).values()
    assert credentials.password == secret and secret not in repr(credentials)


def test_the_allow_list_matches_whole_roots_only() -> None:
    """What a curator might try to slip past the allow-list (no stack needed)."""
    from voxelhub_data.pulls import BadPullRequest, ServerNotAllowed, parse_request

    allowed = ["https://pacs.example.org/dicom-web/"]

    def ask(url: str) -> Any:
        body = json.dumps({"url": url, "query": {"patient_id": "P1"}, "workers": 64})
        return parse_request(body.encode(), allowed, max_workers=8)

    # the same root however it is written; workers capped by the site
    request = ask("HTTPS://PACS.example.org:443/dicom-web")
    assert request.workers == 8 and request.query.patient_id == "P1"
    for url in (
        "https://pacs.example.org/dicom-web/../admin",
        "https://pacs.example.org/dicom-web-other",
        "https://pacs.example.org/",
        "https://pacs.example.org:8443/dicom-web",
        "http://pacs.example.org/dicom-web",
        "https://pacs.example.org.evil.test/dicom-web",
        "file:///etc/passwd",
    ):
        with pytest.raises(ServerNotAllowed):
            ask(url)
    for url in ("https://pacs.example.org/dicom-web?x=1", "https://pacs.example.org/dicom-web#@x"):
        with pytest.raises(BadPullRequest, match="no query"):
            ask(url)


def test_queries_and_the_panel_go_through_the_service(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``voxelhub pull --list`` and the panel's Find ask the service (the kernel may not reach
    the archive); curators only; the panel pulls through it with its progress bar."""
    from voxelhub.dicomweb import EmptyQuery, StudyQuery, pull_panel
    from voxelhub.dicomweb.service_pull import find
    from voxelhub.errors import AccessDenied

    study = str(header(dicom_files(SERIES)[0]).StudyInstanceUID)
    listed = _cli_pull(site, CAROL, "--project", LUNG, "--patient-id", PATIENT, "--list")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert study in listed.stdout and "1 study(ies)" in listed.stdout
    refused = _cli_pull(site, ALICE, "--project", LUNG, "--patient-id", PATIENT, "--list")
    assert refused.returncode == 2 and "dicom.query needs curator" in refused.stderr
    with pytest.raises(EmptyQuery):
        find(site.archive.url, site.location(CAROL), StudyQuery(patient_id="NOBODY-HERE"),
             project=LUNG)  # fmt: skip
    with pytest.raises(AccessDenied, match="not one of the DICOMweb servers"):
        find(site.stack.url + "/hub/api", site.location(CAROL), StudyQuery(patient_id="x"),
             project=LUNG)  # fmt: skip
    asked = site.audit(user=CAROL, action="dicom.query")
    assert [r["decision"] for r in asked] == ["allow", "deny", "deny"]
    assert asked[0]["count"] == 130 and asked[1]["detail"]["kind"] == "EmptyQuery"
    assert site.audit(user=ALICE, action="dicom.query")[-1]["decision"] == "deny"
    # the panel, as a notebook on the hub uses it: the store is the service's URL
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", site.tokens[CAROL])
    panel = pull_panel(site.stack.data_url, project=LUNG, url=site.archive.url)
    panel.patient_id.value = PATIENT
    panel.find_button.click()
    assert "1 study(ies), 130 instance(s)" in panel.status.value, panel.status.value
    panel.pull_button.click()
    panel.thread.join(300)  # type: ignore[union-attr]
    assert panel.report is not None and panel.report.exit_code == 0, panel.error
    assert panel.progress.value == panel.progress.max == 130
    assert panel.report.ingest is not None and panel.report.ingest.unchanged
