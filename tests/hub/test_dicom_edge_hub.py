"""The DICOM edge on the real stack (issue 11): the hub starts it as a managed service from
``hub_config/`` (``$VOXELHUB_DICOM_EDGE``); dcmtk's storescu sends a real series from a PACS's
network namespace; the lung curator sees the arrival at the data service (``GET api/arrivals``)
and the volume in the catalog, a viewer may not list arrivals, the admin finds it in the audit
trail; stopping the hub stops Orthanc and removes the edge's namespace.

Needs root (unix accounts, network namespaces) and Debian's orthanc and dcmtk.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from tests.dicom_factory import write_series
from tests.dicom_net.conftest import DICOM, PORT, PacsHost

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "extensions"))

from voxelhub_hub.client import HubBrowser  # noqa: E402
from voxelhub_hub.project_groups import remove_group  # noqa: E402
from voxelhub_hub.stack import HubStack  # noqa: E402
from voxelhub_hub.system_users import remove_account, remove_managed_group_if_unused  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(os.geteuid() != 0, reason="unix accounts and namespaces need root"),
]

S = secrets.token_hex(3)
ADMIN, ALICE, CAROL = f"vdeadm{S}", f"vdea{S}", f"vdec{S}"
LUNG = f"lung{S}"
GROUPS = {LUNG: [ALICE, CAROL], f"{LUNG}:curator": [CAROL]}
SERVICE_ACCOUNT = f"vhdedge{S}"


def test_a_pacs_sends_into_a_project_through_the_hub() -> None:
    from voxelhub import ingest, open_catalog

    state = Path(tempfile.mkdtemp(prefix="vhdicomhub-"))
    os.chmod(state, 0o755)
    pacs = PacsHost(subnet=secrets.randbelow(200) + 20)
    site = state / "dicom_edge.json"
    site.write_text(
        json.dumps(
            {
                "ae_titles": {"VHLUNG": LUNG},
                "callers": {LUNG: [f"PACSA@{pacs.ip}"]},
                "stable_seconds": 2,
                "poll_seconds": 0.3,
                "interface": pacs.edge_link,
                "address": f"{pacs.edge_ip}/24",
                "dicom_port": PORT,
                "secrets_dir": str(state / "edge-secrets"),
            }
        )
    )
    stack = HubStack(
        state,
        admins=[ADMIN],
        projects=GROUPS,
        spawner="system",
        tls=True,
        extra_env={"VOXELHUB_DATA_USER": SERVICE_ACCOUNT, "VOXELHUB_DICOM_EDGE": str(site)},
    )
    try:
        store = state / "store"
        write_series(state / "first", slices=8, rows=24, columns=24, seed=1, patient_id="P1")
        assert not ingest(state / "first", store, project=LUNG, progress=False).failed
        stack.store = str(store)
        stack.start(timeout=180)
        deadline = time.monotonic() + 90
        while not (state / "dicom" / "ready.json").exists():
            assert time.monotonic() < deadline, f"the edge did not start: {stack.tail()}"
            time.sleep(0.2)
        edge_procs = [p for p in stack.processes() if p.name() in ("Orthanc", "sleep")]
        assert {p.name() for p in edge_procs} == {"Orthanc", "sleep"}, stack.tail()

        admin = HubBrowser(stack.url, stack.verify)
        password = secrets.token_urlsafe(18)
        admin.signup(ADMIN, password)
        admin.login(ADMIN, password, next_url="/hub/home")
        for group, members in GROUPS.items():
            admin.api("POST", f"/groups/{group}/users", json={"users": members}, ok=(200, 201))
        tokens = {
            name: admin.api(
                "POST", f"/users/{name}/tokens", json={"note": "dicom edge", "expires_in": 3600}
            )["token"]
            for name in (ADMIN, ALICE, CAROL)
        }

        def get(path: str, user: str, **params: str) -> requests.Response:
            return requests.get(
                stack.data_url + path,
                headers={"Authorization": f"token {tokens[user]}"},
                params=params,
                timeout=30,
            )

        files = sorted((DICOM / "ct_ge_hispeed_gantry_tilt").glob("*.dcm"))
        out = pacs.storescu("PACSA", "VHLUNG", files)
        assert "Association Accepted" in out, out

        deadline = time.monotonic() + 120
        while True:
            r = get("/api/arrivals", CAROL, project=LUNG)
            assert r.status_code == 200, r.text
            rows = r.json()["arrivals"]
            if rows and rows[0]["state"] not in ("receiving", "ingesting"):
                break
            assert time.monotonic() < deadline, (rows, stack.tail())
            time.sleep(0.5)
        [arrival] = rows
        assert arrival["state"] == "ingested", arrival
        assert arrival["instances"] == len(files) and arrival["calling_aet"] == "PACSA"

        # the curator's catalog, through the service, holds the volume
        cat = open_catalog(stack.data_url, storage_options={"token": tokens[CAROL]})
        assert set(arrival["volumes"]) <= set(cat.series(project=LUNG).volume_uid)
        # a viewer of the project may not list its arrivals; nobody may without a project
        assert get("/api/arrivals", ALICE, project=LUNG).status_code == 403
        assert get("/api/arrivals", CAROL).status_code == 400
        assert get("/api/arrivals", ADMIN).json()["arrivals"][0]["id"] == arrival["id"]

        # the curator's arrivals panel shows the same, the viewer's says why it is empty
        from voxelhub.widgets.arrivals_panel import ArrivalsPanel

        panel = ArrivalsPanel(cat, LUNG)
        [row] = panel.table.rows
        assert (row["id"], row["state"], row["instances"]) == (
            arrival["id"],
            "ingested",
            len(files),
        )
        assert row["volumes"] == len(arrival["volumes"]) and "PACSA" in row["caller"]
        assert panel.arrivals[0].state.finished and not panel.error
        viewer = open_catalog(stack.data_url, storage_options={"token": tokens[ALICE]})
        refused = ArrivalsPanel(viewer, LUNG)
        assert refused.table.rows == [] and "refused" in refused.error, refused.error
        records = get("/api/audit", ADMIN, action="dicom.arrival").json()["records"]
        assert [(r["project"], r["decision"]) for r in records] == [(LUNG, "allow")]
        denied = get("/api/audit", ADMIN, action="dicom.arrivals").json()["records"]
        assert any(r["user"] == ALICE and r["decision"] == "deny" for r in denied)
    finally:
        survivors = stack.stop()
        pacs.close()
        for name in (ADMIN, ALICE, CAROL):
            remove_account(name)
        remove_managed_group_if_unused()
        subprocess.run(["userdel", SERVICE_ACCOUNT], capture_output=True, check=False)
        subprocess.run(["groupdel", SERVICE_ACCOUNT], capture_output=True, check=False)
        for group in GROUPS:
            remove_group(group)
        shutil.rmtree(state, ignore_errors=True)
    assert not survivors, survivors  # Orthanc, the worker and the holder stopped with the hub
    link = subprocess.run(["ip", "link", "show", pacs.edge_link], capture_output=True)
    assert link.returncode != 0  # the edge's namespace is gone, its veth end with it
