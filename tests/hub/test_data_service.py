"""The data service on the real stack: per-project roles, the OS closing the store, attacks, audit.

One module-scoped hub (HTTPS proxy, the data service as a managed service under its own unix
account, the root checkpointer).  Two projects, four users: alice views ``lung``; bob is an
analyst of ``brain``; carol is a curator of ``lung`` and views ``brain``; dave is an analyst of
``lung`` and a curator of ``brain``.  They use the same
client code a kernel uses (``voxelhub.open_catalog(<service URL>)`` with their hub token).  A
real second unix user tries the store's files directly, an attack suite of more than a thousand
requests tries everything else, and the audit trail is verified and then tampered with.

Needs root (unix accounts); about a minute on 2 cores.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import json
import os
import pwd
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
import pytest
import requests

from tests.dicom_factory import write_series

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "extensions"))

from voxelhub_hub.client import HubBrowser  # noqa: E402
from voxelhub_hub.project_groups import remove_group  # noqa: E402
from voxelhub_hub.stack import HubStack  # noqa: E402
from voxelhub_hub.system_users import (  # noqa: E402
    ensure_account,
    remove_account,
    remove_managed_group_if_unused,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(os.geteuid() != 0, reason="unix accounts need root"),
]

S = secrets.token_hex(3)
ADMIN, ALICE, BOB, CAROL, DAVE = f"vdadm{S}", f"vda{S}", f"vdb{S}", f"vdc{S}", f"vdd{S}"
LUNG, BRAIN = f"lung{S}", f"brain{S}"
SERVICE_ACCOUNT = f"vhdata{S}"
SPLIT_SERIES = f"1.2.826.0.1.3680043.99.{int(S, 16)}"
GROUPS = {
    LUNG: [ALICE, CAROL, DAVE],
    f"{LUNG}:curator": [CAROL],
    f"{LUNG}:analyst": [DAVE],
    BRAIN: [BOB, CAROL, DAVE],
    f"{BRAIN}:analyst": [BOB],
    f"{BRAIN}:curator": [DAVE],
}
SEES = {ALICE: {LUNG}, BOB: {BRAIN}, CAROL: {LUNG, BRAIN}, DAVE: {LUNG, BRAIN}}


class Site:
    def __init__(self, stack: HubStack, state: Path, store: Path) -> None:
        self.stack, self.state, self.store = stack, state, store
        self.tokens: dict[str, str] = {}
        self.volumes: dict[str, list[str]] = {}  # project -> volume uids
        self.doomed = ""  # a third lung volume, deleted by test_curators_delete_volumes
        self.paths: dict[str, str] = {}  # volume uid -> store path
        self.sums: dict[str, float] = {}
        self.admin: HubBrowser | None = None

    @property
    def audit_log(self) -> Path:
        return self.state / "audit" / "audit.log"

    @property
    def checkpoints(self) -> Path:
        return self.state / "audit-checkpoints.jsonl"

    def catalog(self, user: str) -> Any:
        import voxelhub

        return voxelhub.open_catalog(
            self.stack.data_url, storage_options={"token": self.tokens[user]}
        )

    def get(self, path: str, token: str | None, **kw: Any) -> requests.Response:
        headers = dict(kw.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"token {token}"
        return requests.get(self.stack.data_url + path, headers=headers, timeout=30, **kw)


def _ingest(
    state: Path,
) -> tuple[Path, dict[str, list[str]], dict[str, str], dict[str, float], str]:
    from voxelhub import ingest, open_catalog

    store = state / "store"
    folder = state / "dicom" / "doomed"
    write_series(folder, slices=6, rows=24, columns=24, seed=99, patient_id="PDEL")
    report = ingest(folder, store, project=LUNG, progress=False)
    assert not report.failed, report.summary()
    (doomed,) = open_catalog(store).series(patient="PDEL").volume_uid
    for echo in (1, 2):  # one series split into two volumes (by echo), deleted one by one
        folder = state / "dicom" / "split" / str(echo)
        write_series(folder, slices=4, rows=16, columns=16, echo_number=echo,
                     series_uid=SPLIT_SERIES, patient_id="PSPLIT", seed=50 + echo)  # fmt: skip
    report = ingest(state / "dicom" / "split", store, project=LUNG, progress=False)
    assert not report.failed and len(report.written) == 2, report.summary()
    for i, project in enumerate((LUNG, BRAIN)):
        for j in range(2):
            folder = state / "dicom" / project / str(j)
            write_series(
                folder, slices=8, rows=24, columns=24, seed=10 * i + j, patient_id=f"P{i}{j}"
            )
            report = ingest(folder, store, project=project, progress=False)
            assert not report.failed, report.summary()
    cat = open_catalog(store)
    frame = cat.series()
    frame = frame[~frame.patient_id.isin(["PDEL", "PSPLIT"])]
    volumes = {p: sorted(frame[frame.project == p].volume_uid) for p in (LUNG, BRAIN)}
    paths = dict(zip(frame.volume_uid, frame.store_path, strict=True))
    sums = {
        uid: float(np.asarray(cat.open_series(uid)).astype(np.float64).sum())
        for uid in frame.volume_uid
    }
    paths[doomed] = str(cat.volume_row(doomed)["store_path"])
    cat.close()
    return store, volumes, paths, sums, doomed


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    state = Path(tempfile.mkdtemp(prefix="vhdatastate-"))
    os.chmod(state, 0o755)
    stack = HubStack(
        state,
        admins=[ADMIN],
        projects=GROUPS,
        spawner="system",
        tls=True,
        extra_env={"VOXELHUB_DATA_USER": SERVICE_ACCOUNT, "VOXELHUB_AUDIT_CHECKPOINT_SECONDS": "1"},
    )
    try:
        store, volumes, paths, sums, doomed = _ingest(state)
        stack.store = str(store)
        site = Site(stack, state, store)
        site.volumes, site.paths, site.sums, site.doomed = volumes, paths, sums, doomed
        stack.start(timeout=180)
        admin = HubBrowser(stack.url, stack.verify)
        password = secrets.token_urlsafe(18)
        admin.signup(ADMIN, password)
        admin.login(ADMIN, password, next_url="/hub/home")
        site.admin = admin
        # the hub created the users from its groups (load_groups)
        for group, members in GROUPS.items():  # load_groups made them; make sure of members
            admin.api("POST", f"/groups/{group}/users", json={"users": members}, ok=(200, 201))
        for name in (ADMIN, ALICE, BOB, CAROL, DAVE):
            body = {"note": "data service test", "expires_in": 3600}
            site.tokens[name] = admin.api("POST", f"/users/{name}/tokens", json=body)["token"]
        ensure_account(ALICE)
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


def test_each_user_sees_and_reads_only_their_projects(site: Site) -> None:
    from voxelhub.errors import AccessDenied, NotFound

    for user, projects in SEES.items():
        cat = site.catalog(user)
        frame = cat.series()
        assert set(frame.project) == projects, (user, set(frame.project))
        assert set(cat.projects().name) == projects
        assert set(cat.studies().project) == projects
        assert cat.whoami()["name"] == user
        for project in (LUNG, BRAIN):
            for uid in site.volumes[project]:
                if project in projects:
                    volume = cat.open_series(uid)
                    total = float(volume.astype("float64").sum().compute())
                    assert total == pytest.approx(site.sums[uid])
                else:
                    with pytest.raises((AccessDenied, NotFound)):
                        cat.open_series(uid)
                    with pytest.raises(AccessDenied):
                        cat.series(project=project)


def test_a_level_and_a_stored_volume_travel_through_the_service(site: Site) -> None:
    cat = site.catalog(ALICE)
    uid = site.volumes[LUNG][0]
    stored = cat.stored_volume(uid)
    assert stored.project == LUNG and stored.store_path == site.paths[uid]
    assert len(stored.levels) >= 1 and stored.geometry.spacing_zyx[1] > 0
    direct = np.asarray(stored.open(level=len(stored.levels) - 1))
    assert direct.shape == tuple(stored.levels[-1].shape)


def test_roles_decide_who_writes_labels(site: Site) -> None:
    from voxelhub.errors import AccessDenied

    lung, brain = site.volumes[LUNG][0], site.volumes[BRAIN][0]
    shape = site.catalog(BOB).stored_volume(brain).shape
    mask = np.zeros(shape, dtype=np.uint8)
    mask[2:4, 5:10, 5:10] = 1
    with pytest.raises(AccessDenied, match="viewer"):
        site.catalog(ALICE).put_labels(lung, "tumour", mask, {1: "tumour"}, False)
    with pytest.raises(AccessDenied, match="not a member"):
        site.catalog(ALICE).put_labels(brain, "tumour", mask, {1: "tumour"}, False)
    with pytest.raises(AccessDenied, match="viewer"):
        site.catalog(CAROL).put_labels(brain, "tumour", mask, {1: "tumour"}, False)
    written = site.catalog(BOB).put_labels(brain, "tumour", mask, {1: "tumour"}, False)
    assert written["name"] == "tumour"
    stored = site.catalog(CAROL).stored_volume(brain)  # a viewer reads it back
    assert stored.labels == ("tumour",)
    from voxelhub.roi.labels import read_labels

    back = read_labels(site.catalog(CAROL), brain, "tumour")
    assert int(np.asarray(back).sum()) == int(mask.sum())
    # a curator of lung may write there
    shape = site.catalog(CAROL).stored_volume(lung).shape
    assert site.catalog(CAROL).put_labels(lung, "seg", np.ones(shape, np.uint8), None, False)


def test_write_labels_with_the_hubs_catalog_goes_through_the_service(site: Site) -> None:
    """``roi.write_labels`` with a ServiceCatalog: the same LabelImage, colours and source kept,
    the local path's errors, roles checked and the write audited by the service."""
    import xarray as xr

    from voxelhub.errors import AccessDenied, GeometryError, StoreError
    from voxelhub.roi import LabelImage, list_labels, read_labels, write_labels

    uid = site.volumes[BRAIN][1]
    bob = site.catalog(BOB)
    stored = bob.stored_volume(uid)
    organs = np.zeros(stored.shape, dtype=np.int64)  # sent as the smallest dtype that holds it
    organs[1:3, 4:9, 4:9] = 1
    organs[4:6, 10:20, 10:20] = 2
    written = write_labels(
        bob,
        uid,
        "organs",
        organs,
        names={1: "liver", 2: "spleen"},
        colors={1: (10, 20, 30), 2: (40, 50, 60, 70)},
        source={"by": "test", "tool": "manual"},
    )
    assert isinstance(written, LabelImage)
    assert written.name == "organs" and written.names == {1: "liver", 2: "spleen"}
    assert written.dtype == np.dtype(np.uint8).str
    assert written.rel_path == f"{site.paths[uid]}/labels/organs"
    assert written.checksum.startswith("sha256:")
    carol = site.catalog(CAROL)  # a viewer of brain reads it back, colours and source included
    assert "organs" in list_labels(carol, uid)
    back = read_labels(carol, uid, "organs")
    assert np.array_equal(np.asarray(back), organs.astype(np.uint8))
    assert back.attrs["label_names"] == {1: "liver", 2: "spleen"}
    assert back.attrs["label_colors"] == {1: [10, 20, 30, 255], 2: [40, 50, 60, 70]}
    assert back.attrs["source"] == {"by": "test", "tool": "manual"}
    assert back.attrs["checksum"] == written.checksum
    records = _audit(site, user=BOB, action="labels.write")
    assert any(r["decision"] == "allow" and r.get("labels") == "organs" for r in records)

    # what the local path refuses, refused with the same errors
    with pytest.raises(StoreError, match="overwrite=True"):
        write_labels(bob, uid, "organs", organs > 0)
    with pytest.raises(GeometryError, match="shape"):
        write_labels(bob, uid, "bad", np.zeros((1, 2, 3), dtype=np.uint8))
    moved = xr.DataArray(organs > 0, attrs={"affine_lps": np.eye(4) * 7})
    with pytest.raises(GeometryError, match="another affine"):
        write_labels(bob, uid, "moved", moved)
    with pytest.raises(ValueError, match="no name for label value"):
        write_labels(bob, uid, "partial", organs, names={1: "liver"})
    with pytest.raises(ValueError, match=">= 0"):
        write_labels(bob, uid, "negative", -organs)
    with pytest.raises(AccessDenied, match="viewer"):
        write_labels(carol, uid, "carols", organs > 0)
    # overwrite replaces it; a boolean mask gets its name as the label name
    again = write_labels(bob, stored, "organs", organs == 2, overwrite=True)
    assert again.names == {1: "organs"} and again.checksum != written.checksum
    assert int(np.asarray(read_labels(carol, uid, "organs")).sum()) == int((organs == 2).sum())
    # a bad colour sent straight to the service is a 400, not a 500, and audited
    before = _denials(site)
    token = site.tokens[BOB]
    response = requests.put(
        f"{site.stack.data_url}/api/volumes/{uid}/labels/x",
        params={"colors": json.dumps({"1": [1, 2]})},
        data=b"",
        headers={"Authorization": f"token {token}"},
        timeout=30,
    )
    assert response.status_code == 400 and "colour" in response.json()["message"]
    assert _denials(site) == before + 1


def _wait_for(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise AssertionError(f"{what} did not answer at {url}")


def _expires_in(url: str) -> float:
    """Seconds a presigned URL has left (SigV2 ``Expires`` epoch, SigV4 ``X-Amz-Expires``)."""
    from urllib.parse import parse_qs, urlparse

    query = parse_qs(urlparse(url).query)
    if "X-Amz-Expires" in query:
        signed = time.mktime(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
        return signed - time.timezone + int(query["X-Amz-Expires"][0]) - time.time()
    return int(query["Expires"][0]) - time.time()


def test_presigned_urls_on_object_storage(site: Site, tmp_path: Path) -> None:
    """A store on S3 (moto's server, recording every request it receives), served by the data
    service with ``presign_seconds``: a chunk read is checked, audited as one grant record and
    answered 307 to a presigned URL; the client reads the same voxels, and the object store never
    sees the hub token.  Metadata still comes through the service; an outsider gets no URL.

    The service runs outside the hub's process tree here (the hub's own config serves a local
    folder), but with the hub's API for tokens and groups, as the managed one does."""
    import s3fs
    from traitlets import TraitError
    from voxelhub_data.app import DataService

    import voxelhub
    from tests.processes import free_port, stop

    assert "VOXELHUB_DATA_PRESIGN_SECONDS" not in os.environ
    assert DataService().presign_seconds == 0  # off unless a site turns it on
    with pytest.raises(TraitError, match="between 0 and 3600"):
        DataService(presign_seconds=7200)

    recording = tmp_path / "s3-requests.jsonl"
    s3_port, port = free_port(), free_port()
    aws = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    moto = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(s3_port)],
        env={
            **os.environ,
            "MOTO_ENABLE_RECORDING": "true",
            "MOTO_RECORDER_FILEPATH": str(recording),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    service: subprocess.Popen[bytes] | None = None
    try:
        endpoint = f"http://127.0.0.1:{s3_port}"
        _wait_for(endpoint, moto, "moto")
        options = {"key": "test", "secret": "test", "endpoint_url": endpoint}
        bucket = f"vh-{secrets.token_hex(5)}"
        s3fs.S3FileSystem(**options, skip_instance_cache=True).mkdir(bucket)
        url = f"s3://{bucket}/store"
        catalog_url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
        write_series(tmp_path / "dicom", slices=20, rows=96, columns=96, seed=7, patient_id="S3")
        location = voxelhub.open_location(url, options)
        report = voxelhub.ingest(
            tmp_path / "dicom", location, project=LUNG, catalog_url=catalog_url, progress=False
        )
        assert len(report.written) == 1, report.summary()
        direct = voxelhub.open_catalog(url, catalog_url=catalog_url, storage_options=options)
        (uid,) = direct.series().volume_uid
        expected = np.asarray(direct.open_series(uid))
        store_path = str(direct.volume_row(uid)["store_path"])
        direct.close()

        prefix = "/services/voxelhub-data/"
        env = {
            **os.environ,
            **aws,
            "PYTHONPATH": os.pathsep.join([str(REPO / "extensions"), str(REPO / "workspace")]),
            "JUPYTERHUB_API_URL": f"http://127.0.0.1:{site.stack.ports['VOXELHUB_HUB_API_PORT']}/hub/api",
            "JUPYTERHUB_API_TOKEN": site.tokens[ADMIN],  # reads users and groups, as the service's
            "JUPYTERHUB_CLIENT_ID": "service-voxelhub-data",
            "JUPYTERHUB_SERVICE_NAME": "voxelhub-data",  # users' tokens carry access to it
            "JUPYTERHUB_SERVICE_URL": f"http://127.0.0.1:{port}",
            "JUPYTERHUB_SERVICE_PREFIX": prefix,
            "VOXELHUB_DATA_STORAGE_OPTIONS": json.dumps({"endpoint_url": endpoint}),
        }
        audit = tmp_path / "audit" / "audit.log"
        audit.parent.mkdir()
        command = [sys.executable, "-m", "voxelhub_data", "--store", url, "--catalog-url"]
        command += [catalog_url, "--audit-log", str(audit), "--presign-seconds", "30"]
        service_log = (tmp_path / "service.log").open("wb")
        service = subprocess.Popen(command, env=env, stdout=service_log, stderr=subprocess.STDOUT)
        data_url = f"http://127.0.0.1:{port}{prefix.rstrip('/')}"
        _wait_for(data_url + "/api/health", service, "the data service")

        # alice (a viewer of the project) reads the volume: the same voxels
        recording.write_text("")
        cat = voxelhub.open_catalog(data_url, storage_options={"token": site.tokens[ALICE]})
        assert list(cat.series().volume_uid) == [uid]
        got = np.asarray(cat.open_series(uid))
        np.testing.assert_array_equal(got, expected)
        # the client's own API calls (urllib) follow the 307 without the token too
        key = f"{store_path}/0/c/0/0/0"
        status, body, _ = cat.location.request("store/" + key)
        fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
        assert status == 200 and body == fs.cat_file(f"{bucket}/store/{key}")

        received = [json.loads(line) for line in recording.read_text().splitlines() if line]
        presigned = [r for r in received if "Signature=" in r["url"]]
        assert presigned, "no read went to the object store by a presigned URL"
        assert all(0 < _expires_in(r["url"]) <= 31 and r["method"] == "GET" for r in presigned)
        assert all(store_path in r["url"] and "zarr.json" not in r["url"] for r in presigned)
        for r in received:  # the hub token never reaches the object store, in any header
            assert site.tokens[ALICE] not in json.dumps(r), r["url"]
            assert not str(r["headers"].get("Authorization", "")).startswith("token ")

        # each grant is audited, counted into one allow record per (user, volume, minute)
        admin = {"Authorization": f"token {site.tokens[ADMIN]}"}
        query = {"user": ALICE, "action": "volume.presign"}
        r = requests.get(data_url + "/api/audit", params=query, headers=admin, timeout=30)
        assert r.status_code == 200, r.text
        grants = r.json()["records"]
        assert 1 <= len(grants) <= 2  # a minute may turn during the read
        assert {(g["decision"], g["volume"], g["project"]) for g in grants} == {
            ("allow", uid, LUNG)
        }
        assert sum(g["count"] for g in grants) == len(presigned)

        # one chunk key by hand: 307 to the object store for alice, refused to bob
        alice = {"Authorization": f"token {site.tokens[ALICE]}"}
        r = requests.get(
            f"{data_url}/api/store/{key}", headers=alice, allow_redirects=False, timeout=30
        )
        assert r.status_code == 307 and r.headers["Location"].startswith(endpoint + "/" + bucket)
        meta = requests.get(
            f"{data_url}/api/store/{store_path}/zarr.json", headers=alice, timeout=30
        )
        assert meta.status_code == 200 and meta.json()["zarr_format"] == 3  # through the service
        assert requests.get(r.headers["Location"], timeout=30).status_code == 200
        bob = {"Authorization": f"token {site.tokens[BOB]}"}
        r = requests.get(
            f"{data_url}/api/store/{key}", headers=bob, allow_redirects=False, timeout=30
        )
        assert r.status_code == 403 and "Location" not in r.headers
        r = requests.get(data_url + "/api/audit", params={"user": BOB}, headers=admin, timeout=30)
        assert any(
            g["decision"] == "deny" and g["action"] == "volume.read" for g in r.json()["records"]
        )
    finally:
        if service is not None:
            stop(service)
        stop(moto)


def _settings() -> Any:
    from voxelhub.features import Discretisation, Settings

    return Settings(
        discretisation=Discretisation("fbs", bin_width=50.0),
        families=("intensity_statistics",),
        aggregations=("3D_avg",),
    )


def above_mean(volume: Any) -> Any:
    """An ROI made from the volume itself."""
    return volume > float(volume.mean())


def _feature_body(
    uid: str, settings: Any, *, meta: dict[bytes, bytes] | None = None, row_hash: str = ""
) -> bytes:
    """A result table for one volume as the client sends it (Parquet, settings in metadata)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from voxelhub.features.results import COLUMNS, SETTINGS_METADATA

    row = [uid, "roi", "mean", "stat", 1.5, "Q4LE", row_hash or settings.hash, None]
    arrow = pa.Table.from_pandas(pd.DataFrame([row], columns=COLUMNS), preserve_index=False)
    metadata = {SETTINGS_METADATA: settings.to_json().encode()} if meta is None else meta
    buf = io.BytesIO()
    pq.write_table(arrow.replace_schema_metadata(metadata), buf)
    return buf.getvalue()


def _audit(site: Site, **params: str) -> list[dict[str, Any]]:
    r = site.get("/api/audit", site.tokens[ADMIN], params=params)
    assert r.status_code == 200, r.text
    return list(r.json()["records"])


def test_analysts_write_feature_tables_viewers_read_them(site: Site) -> None:
    import pandas as pd

    import voxelhub
    from voxelhub.errors import AccessDenied, NotFound
    from voxelhub.features import extract, extract_many

    settings = _settings()
    bob = site.catalog(BOB)
    rows = bob.series(project=BRAIN)
    table = extract_many(
        rows, roi={"bright": above_mean}, settings=settings, catalog=bob, save_to=bob,
        progress=False,
    )  # fmt: skip
    assert table["error"].isna().all() and set(table.series) == set(site.volumes[BRAIN])
    # the same numbers as an extraction straight from the store (read here as root)
    local = voxelhub.open_catalog(site.store)
    uid = site.volumes[BRAIN][0]
    volume = local.open_series(uid)
    direct = extract(volume, above_mean(volume), settings)
    got = table[table.series == uid]
    np.testing.assert_allclose(got["value"].to_numpy(), direct["value"].to_numpy())
    local.close()

    def key(frame: Any) -> Any:
        return frame.sort_values(["series", "feature"]).reset_index(drop=True)[
            ["series", "roi", "feature", "value", "settings_hash"]
        ]

    # stored at the hub: a viewer of brain reads them, a non-member sees none
    pd.testing.assert_frame_equal(key(site.catalog(CAROL).features(settings)), key(table))
    assert site.catalog(ALICE).features(settings).empty
    assert site.catalog(CAROL).feature_settings(settings.hash) == settings

    def never(volume: Any) -> Any:
        raise AssertionError("a stored case was computed again")

    resumed = extract_many(
        rows, roi={"bright": never}, settings=settings, catalog=bob, save_to=bob, progress=False
    )
    pd.testing.assert_frame_equal(key(resumed), key(table))

    # a viewer and a non-member are refused, and nothing of a refused table is stored
    with pytest.raises(AccessDenied, match="viewer"):
        site.catalog(CAROL).put_features(table, settings)
    with pytest.raises(AccessDenied, match="not a member"):
        site.catalog(ALICE).put_features(table, settings)
    carol = site.catalog(CAROL)
    lung_uid = site.volumes[LUNG][0]
    lung_rows = table[table.series == uid].assign(series=lung_uid, roi="mixed")
    mixed = pd.concat([lung_rows, table[table.series == uid].assign(roi="mixed")])
    with pytest.raises(AccessDenied, match="viewer"):
        carol.put_features(mixed, settings)  # a curator of lung, a viewer of brain
    assert carol.features(settings, series=[lung_uid]).empty
    written = carol.put_features(lung_rows, settings)  # lung alone: she curates it
    assert written["volumes"] == [lung_uid] and written["rows"] == len(lung_rows)
    assert len(site.catalog(ALICE).features(settings, series=[lung_uid])) == len(lung_rows)
    with pytest.raises(AccessDenied, match="viewer"):  # extract_many as a viewer: refused
        extract_many(
            [uid], roi={"other": above_mean}, settings=settings, catalog=carol, save_to=carol,
            progress=False,
        )  # fmt: skip
    with pytest.raises(NotFound):
        bob.put_features(table.assign(series="1.2.3.no.such.volume"), settings)

    # malformed tables: a clear 400
    token = {"Authorization": f"token {site.tokens[BOB]}"}
    url = site.stack.data_url + "/api/features"
    bad = {
        "not parquet": b"PAR1 not really",
        "no settings": _feature_body(uid, settings, meta={}),
        "broken settings": _feature_body(uid, settings, meta={b"voxelhub.settings": b"{"}),
        "other hash": _feature_body(uid, settings, row_hash="0" * 64),
    }
    for label, body in bad.items():
        r = requests.put(url, data=body, headers=token, timeout=30)
        assert r.status_code == 400, (label, r.status_code, r.text)
        assert r.json()["message"], label
    assert (
        requests.put(url, data=_feature_body(uid, settings), headers=token, timeout=30).status_code
        == 201
    )  # the same body with its own settings is taken

    # audited: each allowed write per volume (with its patient), each refusal
    writes = _audit(site, action="features.write")
    allowed = [r for r in writes if r["decision"] == "allow" and r["user"] == BOB]
    assert {r["volume"] for r in allowed} == set(site.volumes[BRAIN])
    assert all(r["project"] == BRAIN and r["patient"] for r in allowed)
    denied = {(r["user"], r["decision"]) for r in writes if r["decision"] == "deny"}
    assert {(CAROL, "deny"), (ALICE, "deny"), (BOB, "deny")} <= denied
    reads = _audit(site, action="features.read", user=CAROL, series=uid)
    assert reads and reads[0]["project"] == BRAIN


def test_thumbnails_are_checked_and_audited_like_reads(site: Site) -> None:
    from PIL import Image

    import voxelhub
    from voxelhub.errors import AccessDenied, NotFound

    uid = site.volumes[LUNG][0]
    local = voxelhub.open_catalog(site.store)  # the store itself, read here as root
    for params in ({}, {"z": "7", "axis": "z"}, {"z": "3", "axis": "y"}, {"axis": "x"}):
        r = site.get(f"/api/volumes/{uid}/thumbnail", site.tokens[ALICE], params=params)
        assert r.status_code == 200 and r.headers["Content-Type"] == "image/png", r.text
        index = int(params["z"]) if "z" in params else None
        assert r.content == local.thumbnail(uid, index, params.get("axis", "z"))
    local.close()
    image = Image.open(io.BytesIO(site.catalog(ALICE).thumbnail(uid)))
    assert image.mode == "L" and max(image.size) <= 64
    with pytest.raises((AccessDenied, NotFound)):
        site.catalog(BOB).thumbnail(uid)
    assert site.get(f"/api/volumes/{uid}/thumbnail", None).status_code == 401
    alice = site.tokens[ALICE]
    for params in ({"axis": "t"}, {"z": "abc"}, {"z": "8"}, {"z": "-1"}, {"size": "9"}):
        r = site.get(f"/api/volumes/{uid}/thumbnail", alice, params=params)
        assert r.status_code == 400 and r.json()["message"], (params, r.text)
    records = _audit(site, action="volume.thumbnail", series=uid)
    assert any(
        r["user"] == ALICE and r["decision"] == "allow" and r["patient"] and r["nbytes"] > 0
        for r in records
    )
    assert any(r["user"] == BOB and r["decision"] == "deny" for r in records)


def test_the_os_refuses_the_store_files_to_a_member(site: Site) -> None:
    """alice is a member of lung, but as her own unix user she cannot open the store at all."""
    targets = [
        site.store / "catalog.sqlite",
        site.store / site.paths[site.volumes[LUNG][0]] / "zarr.json",
        site.audit_log,
        site.checkpoints,
    ]
    code = (
        "import sys, os\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        open(p, 'rb').read(1); print('READ', p)\n"
        "    except PermissionError:\n"
        "        print('DENIED', p)\n"
    )
    out = subprocess.run(
        # the venv's Python by its real path: a checkout in a private folder links .venv elsewhere
        [
            "runuser",
            "-u",
            ALICE,
            "--",
            str(Path(sys.executable).parent.resolve() / "python"),
            "-c",
            code,
            *map(str, targets),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.count("DENIED") == len(targets), out
    st = os.stat(site.store)
    assert st.st_uid == pwd.getpwnam(SERVICE_ACCOUNT).pw_uid and st.st_mode & 0o077 == 0


def test_membership_change_applies_without_restart(site: Site) -> None:
    assert site.admin is not None
    site.admin.api("DELETE", f"/groups/{LUNG}/users", json={"users": [ALICE]})
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not site.catalog(ALICE).series().empty:
            time.sleep(1)
        assert site.catalog(ALICE).series().empty
        path = site.paths[site.volumes[LUNG][0]]
        assert site.get(f"/api/store/{path}/zarr.json", site.tokens[ALICE]).status_code == 403
    finally:
        site.admin.api("POST", f"/groups/{LUNG}/users", json={"users": [ALICE]})
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and site.catalog(ALICE).series().empty:
        time.sleep(1)
    assert set(site.catalog(ALICE).series().project) == {LUNG}


def _attacks(site: Site) -> list[tuple[str, str, str | None, dict[str, str], bytes | None]]:
    """(label, method, token, headers, body) → request paths; every one must be refused."""
    lung_path = site.paths[site.volumes[LUNG][0]]
    brain_uid = site.volumes[BRAIN][0]
    brain_path = site.paths[brain_uid]
    alice = site.tokens[ALICE]
    lung_features = _feature_body(site.volumes[LUNG][0], _settings())
    brain_features = _feature_body(brain_uid, _settings())
    bad_tokens = {
        "none": None,
        "empty": "",
        "malformed": "not a token at all ' OR 1=1 --",
        "forged": secrets.token_hex(16),
        "long": "a" * 5000,
        "admin-name": ADMIN,
    }
    data_paths = [
        f"/api/store/{brain_path}/zarr.json",
        f"/api/store/{brain_path}/0/zarr.json",
        f"/api/store/{brain_path}/0/c/0/0/0",
        f"/api/volumes/{brain_uid}",
        "/api/series",
        "/api/studies",
        "/api/projects",
        "/api/audit",
    ]
    traversal = [
        f"/api/store/{lung_path}/../../{BRAIN}/x.ome.zarr/zarr.json",
        f"/api/store/{lung_path}/%2e%2e/%2e%2e/{BRAIN}",
        f"/api/store/{lung_path}/%252e%252e/%252e%252e/catalog.sqlite",
        "/api/store/%2fetc%2fpasswd",
        "/api/store//etc/passwd",
        "/api/store/catalog.sqlite",
        "/api/store/projects/../catalog.sqlite",
        f"/api/store/{lung_path}/..%2f..%2f..%2fcatalog.sqlite",
        f"/api/store/{lung_path}/planted",
        f"/api/store/{lung_path}\\..\\..\\catalog.sqlite",
        f"/api/store/{lung_path}/0/zarr.json%00",
        "/api/store/.tmp/x",
        f"/api/store/projects/{BRAIN}/../{LUNG}/../../catalog.sqlite",
    ]
    sqlish = [
        "' OR '1'='1",
        "%' UNION SELECT * FROM patients --",
        '"; DROP TABLE volumes; --',
        "x" * 500,
        "\x00",
        "' OR 1=1 --",
    ]
    out: list[tuple[str, str, str | None, dict[str, str], bytes | None]] = []
    for tname, tok in bad_tokens.items():
        for path in data_paths:
            for _ in range(5):
                out.append((f"token:{tname} {path}", path, tok, {}, None))
    for header in ("Bearer " + secrets.token_hex(16), "Basic YWRtaW46YWRtaW4=", "token", "token  "):
        for path in data_paths:
            for _ in range(3):
                out.append(
                    (f"header {header[:9]} {path}", path, None, {"Authorization": header}, None)
                )
    for path in data_paths[:4]:  # a valid token of a user outside the project
        for _ in range(35):
            out.append((f"outsider {path}", path, alice, {}, None))
    for _ in range(30):
        out.append(("non-admin audit", "/api/audit", site.tokens[CAROL], {}, None))
    for path in traversal:
        for _ in range(12):
            out.append((f"traversal {path}", path, alice, {}, None))
    for value in sqlish:
        for param in (
            "project",
            "modality",
            "study_uid",
            "uid",
            "flag",
            "limit",
            "offset",
            "after",
        ):
            out.append(
                (
                    f"sql {param}",
                    f"/api/series?{param}={requests.utils.quote(value)}",
                    alice,
                    {},
                    None,
                )
            )
        for param in ("patient", "project", "limit"):
            out.append(
                (
                    f"sql {param}",
                    f"/api/studies?{param}={requests.utils.quote(value)}",
                    alice,
                    {},
                    None,
                )
            )
    for rng in (
        "bytes=999999999999-",
        "bytes=5-2",
        "bytes=0-1,4-8",
        "bytes=-0",
        "items=0-5",
        "bytes=" + "9" * 40 + "-",
        "bytes=abc",
    ):
        for _ in range(10):
            out.append(
                (f"range {rng}", f"/api/store/{lung_path}/zarr.json", alice, {"Range": rng}, None)
            )
    for _ in range(40):  # writes: a viewer, no XSRF from a browser cookie, admin endpoints
        out.append(
            ("viewer write", f"PUT /api/volumes/{site.volumes[LUNG][0]}/labels/x", alice, {}, b"x")
        )
        out.append(("outsider write", f"PUT /api/volumes/{brain_uid}/labels/x", alice, {}, b"x"))
        out.append(("no-token write", f"PUT /api/volumes/{brain_uid}/labels/x", None, {}, b"x"))
        out.append(("viewer features", "PUT /api/features", alice, {}, lung_features))
        out.append(("outsider features", "PUT /api/features", alice, {}, brain_features))
        out.append(("no-token features", "PUT /api/features", None, {}, lung_features))
    for _ in range(20):
        out.append(("outsider thumbnail", f"/api/volumes/{brain_uid}/thumbnail", alice, {}, None))
    lung_uid, deidentify = site.volumes[LUNG][0], b'{"deidentify": true}'
    for _ in range(12):  # curators' changes: deletes and de-identification settings
        out.append(("viewer delete", f"DELETE /api/volumes/{lung_uid}", alice, {}, None))
        out.append(
            ("analyst delete", f"DELETE /api/volumes/{lung_uid}", site.tokens[DAVE], {}, None)
        )
        out.append(("outsider delete", f"DELETE /api/volumes/{brain_uid}", alice, {}, None))
        out.append(("no-token delete", f"DELETE /api/volumes/{brain_uid}", None, {}, None))
        out.append(
            ("traversal delete", "DELETE /api/volumes/..%2f..%2fcatalog.sqlite", alice, {}, None)
        )
        out.append(("delete the catalog", "DELETE /api/store/catalog.sqlite", alice, {}, None))
        out.append(("viewer settings", f"PUT /api/projects/{LUNG}/settings", alice, {}, deidentify))
        out.append(
            (
                "analyst settings",
                f"PUT /api/projects/{LUNG}/settings",
                site.tokens[DAVE],
                {},
                deidentify,
            )
        )
        out.append(
            ("outsider settings", f"PUT /api/projects/{BRAIN}/settings", alice, {}, deidentify)
        )
        out.append(
            ("no-token settings", f"PUT /api/projects/{LUNG}/settings", None, {}, deidentify)
        )
        out.append(("outsider settings read", f"/api/projects/{BRAIN}/settings", alice, {}, None))
        out.append(("traversal settings", "/api/projects/..%2f..%2fetc/settings", alice, {}, None))
    for _ in range(30):
        out.append(("unknown param", "/api/series?password=1", alice, {}, None))
        out.append(("unknown endpoint", "/api/admin/users", alice, {}, None))
    return out


def test_attack_suite_gets_nothing_and_every_denial_is_audited(site: Site) -> None:
    # a planted symbolic link inside a volume alice may read, pointing at the catalog
    lung_path = site.paths[site.volumes[LUNG][0]]
    planted = site.store / lung_path / "planted"
    planted.symlink_to(site.store / "catalog.sqlite")
    os.lchown(planted, pwd.getpwnam(SERVICE_ACCOUNT).pw_uid, -1)
    revoked = site.admin.api(  # type: ignore[union-attr]
        "POST", f"/users/{ALICE}/tokens", json={"note": "revoked", "expires_in": 3600}
    )
    expired = site.admin.api(  # type: ignore[union-attr]
        "POST", f"/users/{ALICE}/tokens", json={"note": "expires", "expires_in": 1}
    )
    assert site.get("/api/", revoked["token"]).status_code == 200
    site.admin.api("DELETE", f"/users/{ALICE}/tokens/{revoked['id']}")  # type: ignore[union-attr]
    time.sleep(6.5)  # past the service's membership/token cache and the token's expiry
    attacks = _attacks(site)
    for _ in range(20):
        attacks.append(("revoked token", "/api/series", revoked["token"], {}, None))
        attacks.append(("expired token", "/api/series", expired["token"], {}, None))
    assert len(attacks) >= 1000, len(attacks)
    secret_bytes = (site.store / "catalog.sqlite").read_bytes()[:64]
    before = _denials(site)

    def send(
        attack: tuple[str, str, str | None, dict[str, str], bytes | None],
    ) -> tuple[str, int, bytes]:
        label, path, token, headers, body = attack
        method = "GET"
        if path.startswith(("PUT ", "DELETE ")):
            method, path = path.split(" ", 1)
        h = dict(headers)
        if token is not None:
            h["Authorization"] = f"token {token}"
        r = requests.request(
            method,
            site.stack.data_url + path,
            headers=h,
            data=body,
            timeout=30,
            allow_redirects=False,
        )
        return label, r.status_code, r.content

    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, attacks))
    problems = []
    for label, status, content in results:
        if status >= 500:
            problems.append(f"{label}: {status} {content[:200]!r}")
        elif label.startswith("sql") and status == 200:
            # parameters are bound, never spliced into SQL: at most alice's own rows come back
            rows = json.loads(content)["rows"]
            if any(row["project"] != LUNG for row in rows):
                problems.append(f"{label}: rows of another project")
        elif status < 400:
            problems.append(f"{label}: answered {status}")
        elif secret_bytes in content or b"Traceback" in content:
            problems.append(f"{label}: leaked {content[:100]!r}")
        else:
            json.loads(content)  # a JSON message, never an HTML traceback
    assert not problems, "\n".join(problems[:30])
    time.sleep(0.5)
    denials = _denials(site) - before
    refused = sum(1 for _, status, _ in results if status >= 400)
    assert denials >= refused, (denials, refused)


def _denials(site: Site) -> int:
    if not site.audit_log.exists():
        return 0
    return sum(1 for line in site.audit_log.open() if '"decision":"deny"' in line)


def test_audit_trail_records_reads_verifies_and_catches_tampering(site: Site) -> None:
    cat = site.catalog(CAROL)
    uid = site.volumes[BRAIN][1]
    cat.open_series(uid).sum().compute()
    # admins query the trail through the service; others may not
    r = site.get("/api/audit", site.tokens[ADMIN], params={"user": CAROL, "series": uid})
    assert r.status_code == 200, r.text
    records = r.json()["records"]
    reads = [x for x in records if x["action"] == "volume.read"]
    assert reads and reads[0]["project"] == BRAIN and reads[0]["patient"]
    assert sum(x["count"] for x in reads) >= 2  # several keys, aggregated per minute
    assert site.get("/api/audit", site.tokens[CAROL]).status_code == 403
    voxelhub_cli = [sys.executable, "-m", "voxelhub.cli"]
    deadline = time.monotonic() + 20
    while not site.checkpoints.exists() or not site.checkpoints.read_text().strip():
        assert time.monotonic() < deadline, "the root checkpointer wrote nothing"
        time.sleep(0.5)
    ok = subprocess.run(
        [
            *voxelhub_cli,
            "audit",
            "verify",
            "--log",
            str(site.audit_log),
            "--checkpoints",
            str(site.checkpoints),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    copy = Path(tempfile.mkdtemp(prefix="vhaudit-")) / "audit.log"
    try:
        lines = site.audit_log.read_bytes().splitlines(keepends=True)
        edited = json.loads(lines[2])
        edited["user"] = "someone-else"
        lines[2] = (json.dumps(edited, separators=(",", ":")) + "\n").encode()
        copy.write_bytes(b"".join(lines))
        bad = subprocess.run(
            [*voxelhub_cli, "audit", "verify", "--log", str(copy)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "line 3" in (bad.stdout + bad.stderr) or "seq 3" in (bad.stdout + bad.stderr)
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def test_bad_input_gets_clear_4xx(site: Site) -> None:
    alice = site.tokens[ALICE]
    r = site.get("/api/series", alice, params={"limit": "abc"})
    assert r.status_code == 400 and "integer" in r.json()["message"]
    r = site.get("/api/series", alice, params={"limit": "100000"})
    assert r.status_code == 400
    r = site.get("/api/volumes/nope", alice)
    assert r.status_code == 404 and "nope" in r.json()["message"]
    path = site.paths[site.volumes[LUNG][0]]
    r = site.get(f"/api/store/{path}/zarr.json", alice, headers={"Range": "bytes=0-9"})
    assert r.status_code == 206 and len(r.content) == 10
    assert r.headers["Content-Range"].startswith("bytes 0-9/")
    full = site.get(f"/api/store/{path}/zarr.json", alice)
    assert full.content[:10] == r.content
    frame = _parquet(site.get("/api/series", alice, params={"format": "parquet"}).content)
    assert set(frame.project) == {LUNG}


def _parquet(body: bytes) -> Any:
    import pandas as pd

    return pd.read_parquet(io.BytesIO(body))


def test_a_write_from_the_browser_needs_the_xsrf_token(site: Site) -> None:
    """bob (analyst of brain) signs in with a password; his browser holds the service's login
    cookie after the OAuth dance.  A write another site makes his browser send (the cookie, no
    XSRF token) is refused and audited; the same write with the token goes through."""
    assert site.admin is not None
    password = secrets.token_urlsafe(18)
    browser = HubBrowser(site.stack.url, site.stack.verify)
    browser.signup(BOB, password)
    site.admin.approve(BOB)
    browser.login(BOB, password, next_url="/hub/home")
    public = site.stack.url + "/services/voxelhub-data"
    # a page opened in the browser: OAuth with the hub, then the service's login cookie
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    whoami = browser.session.get(public + "/api/", headers=html, timeout=60)
    assert whoami.status_code == 200 and whoami.json()["name"] == BOB, whoami.text[:300]
    cookies = {c.name: c.path for c in browser.session.cookies}
    assert cookies.get("service-voxelhub-data") == "/services/voxelhub-data/", cookies

    brain = site.volumes[BRAIN][0]
    shape = site.catalog(BOB).stored_volume(brain).shape
    body = io.BytesIO()
    np.save(body, np.ones(shape, np.uint8), allow_pickle=False)
    url = f"{public}/api/volumes/{brain}/labels/browser"
    denials = _denials(site)
    forged = browser.session.put(url, data=body.getvalue(), timeout=60)
    # HubOAuth does not accept the login cookie on a write without the token: not signed in
    assert forged.status_code in (401, 403), (forged.status_code, forged.text)
    assert _denials(site) == denials + 1
    assert "browser" not in site.catalog(CAROL).stored_volume(brain).labels

    xsrf = browser.session.cookies.get("_xsrf", path="/services/voxelhub-data/")
    assert xsrf, [(c.name, c.path) for c in browser.session.cookies]
    done = browser.session.put(url, data=body.getvalue(), headers={"X-XSRFToken": xsrf}, timeout=60)
    assert done.status_code == 201, (done.status_code, done.text[:300])
    assert "browser" in site.catalog(CAROL).stored_volume(brain).labels


def _send(site: Site, method: str, path: str, token: str | None, **kw: Any) -> requests.Response:
    headers = {"Authorization": f"token {token}"} if token is not None else {}
    return requests.request(
        method, site.stack.data_url + path, headers=headers, timeout=60, allow_redirects=False, **kw
    )


def test_curators_delete_volumes_others_are_refused(site: Site) -> None:
    """carol curates lung: she deletes a lung volume; alice (viewer), dave (analyst of lung,
    curator of brain) and bob (outsider) are refused and audited.  The files go (labels
    included), reads answer 404, and the store stays consistent for fsck."""
    import voxelhub
    from voxelhub.catalog import DeletedVolume
    from voxelhub.errors import AccessDenied, NotFound
    from voxelhub.fsck import check_store

    uid, path = site.doomed, site.paths[site.doomed]
    shape = site.catalog(CAROL).stored_volume(uid).shape
    site.catalog(CAROL).put_labels(uid, "doomed", np.ones(shape, np.uint8), None, False)
    assert (site.store / path / "labels" / "doomed").is_dir()
    assert site.get(f"/api/store/{path}/zarr.json", site.tokens[ALICE]).status_code == 200

    before = _denials(site)
    for user, role in ((ALICE, "viewer"), (DAVE, "analyst"), (BOB, "not a member")):
        with pytest.raises(AccessDenied, match=role):
            site.catalog(user).delete_volume(uid)
    brain_uid = site.volumes[BRAIN][0]  # carol curates lung, not brain
    with pytest.raises(AccessDenied, match="viewer"):
        site.catalog(CAROL).delete_volume(brain_uid)
    assert _denials(site) == before + 4
    assert (site.store / site.paths[brain_uid] / "zarr.json").exists()
    assert (site.store / path / "zarr.json").exists()

    deleted = site.catalog(CAROL).delete_volume(uid)
    assert isinstance(deleted, DeletedVolume)
    assert (deleted.volume_uid, deleted.store_path, deleted.project) == (uid, path, LUNG)
    assert deleted.patient == "PDEL"
    assert not (site.store / path).exists()  # the tree and its labels
    assert site.catalog(CAROL).series(uid=uid).empty
    assert uid not in set(site.catalog(ALICE).series().volume_uid)
    for reader in (ALICE, CAROL):
        assert site.get(f"/api/volumes/{uid}", site.tokens[reader]).status_code == 404
        assert site.get(f"/api/store/{path}/zarr.json", site.tokens[reader]).status_code == 404
    with pytest.raises(NotFound):
        site.catalog(CAROL).open_series(uid)
    with pytest.raises(NotFound):
        site.catalog(CAROL).delete_volume(uid)  # twice: gone

    records = _audit(site, action="volume.delete", series=uid)
    allowed = [r for r in records if r["decision"] == "allow"]
    assert [(r["user"], r["project"], r["patient"]) for r in allowed] == [(CAROL, LUNG, "PDEL")]
    assert {r["user"] for r in records if r["decision"] == "deny"} >= {ALICE, DAVE, BOB}

    # bad input: a 4xx with a message, nothing deleted
    carol = site.tokens[CAROL]
    lung_uid = site.volumes[LUNG][0]
    for target, status in (
        ("1.2.3.no.such.volume", 404),
        ("..%2f..%2fcatalog.sqlite", 404),
        ("%2e%2e", 404),
        ("x" * 300, 404),
        (f"{lung_uid}?force=1", 400),
    ):
        r = _send(site, "DELETE", f"/api/volumes/{target}", carol)
        assert r.status_code == status and r.json()["message"], (target, r.status_code, r.text)
    assert _send(site, "DELETE", f"/api/volumes/{lung_uid}", None).status_code == 401
    assert _send(site, "DELETE", f"/api/store/{site.paths[lung_uid]}", carol).status_code == 405
    assert (site.store / "catalog.sqlite").exists()

    # a split series is deleted one volume at a time, never by its SeriesInstanceUID
    r = _send(site, "DELETE", f"/api/volumes/{SPLIT_SERIES}", carol)
    assert r.status_code == 404 and "split into 2 volumes" in r.json()["message"], r.text
    splits = sorted(site.catalog(CAROL).series(uid=SPLIT_SERIES).volume_uid)
    assert len(splits) == 2
    assert site.catalog(CAROL).delete_volume(splits[0]).volume_uid == splits[0]
    assert list(site.catalog(CAROL).series(uid=SPLIT_SERIES).volume_uid) == splits[1:]
    site.catalog(CAROL).delete_volume(SPLIT_SERIES)  # no longer split: its one volume
    assert site.catalog(CAROL).series(uid=SPLIT_SERIES).empty
    assert set(site.catalog(CAROL).series(project=LUNG).volume_uid) == set(site.volumes[LUNG])

    local = voxelhub.open_catalog(site.store)  # the store itself, read here as root
    check = check_store(local.location, local)
    local.close()
    assert check.consistent and not check.temporaries, check.summary()


def test_curators_change_deidentification_settings(site: Site) -> None:
    """Members read a project's settings, curators change them while it holds no volumes;
    admins create a project de-identifying before its first ingest; all audited."""
    from voxelhub.errors import AccessDenied, NotFound, SettingLocked

    carol, alice, dave = site.catalog(CAROL), site.catalog(ALICE), site.catalog(DAVE)
    lung = carol.project_settings(LUNG)
    assert (lung.name, lung.deidentify, lung.profile) == (LUNG, False, "")
    assert lung.volumes >= len(site.volumes[LUNG]) and lung.locked
    assert alice.project_settings(LUNG) == lung  # a viewer reads them
    with pytest.raises(AccessDenied, match="not a member"):
        site.catalog(BOB).project_settings(LUNG)
    with pytest.raises(SettingLocked, match="holds identifiable data"):
        carol.set_project_settings(LUNG, deidentify=True)
    assert carol.set_project_settings(LUNG, deidentify=False) == lung  # unchanged: fine
    with pytest.raises(AccessDenied, match="viewer"):
        alice.set_project_settings(LUNG, deidentify=True)
    with pytest.raises(AccessDenied, match="analyst"):
        dave.set_project_settings(LUNG, deidentify=False)
    with pytest.raises(AccessDenied, match="viewer"):  # a curator of lung, viewer of brain
        carol.set_project_settings(BRAIN, deidentify=False)
    assert not dave.set_project_settings(BRAIN, deidentify=False).deidentify  # curator

    # a new project, set up by an admin before its first ingest, may still change
    fresh = f"trial{S}"
    admin = site.catalog(ADMIN)
    with pytest.raises(NotFound, match=fresh):
        admin.project_settings(fresh)
    made = admin.set_project_settings(fresh, deidentify=True)
    assert made.deidentify and made.volumes == 0 and not made.locked and made.profile
    assert not admin.set_project_settings(fresh, deidentify=False).deidentify
    with pytest.raises(AccessDenied, match="not a member"):
        carol.set_project_settings(fresh, deidentify=True)

    # bad input: 4xx with a message
    url = f"/api/projects/{LUNG}/settings"
    token = site.tokens[CAROL]
    for body in (b"{", b"[true]", b'{"deidentify": "yes"}', b'{"deidentify": true, "x": 1}', b""):
        r = _send(site, "PUT", url, token, data=body)
        assert r.status_code == 400 and r.json()["message"], (body, r.status_code, r.text)
    for name in ("..%2f..%2fetc", "%2e%2e", "-x", "a" * 70):
        r = _send(site, "GET", f"/api/projects/{name}/settings", token)
        assert r.status_code == 400 and "project name" in r.json()["message"], (name, r.text)

    writes = _audit(site, action="project.settings.write")
    assert any(r["user"] == ADMIN and r["decision"] == "allow" for r in writes)
    assert {(r["user"], r["project"]) for r in writes if r["decision"] == "deny"} >= {
        (ALICE, LUNG),
        (DAVE, LUNG),
        (CAROL, BRAIN),
    }
    reads = _audit(site, action="project.settings", user=ALICE)
    assert any(r["decision"] == "allow" and r["project"] == LUNG for r in reads)
