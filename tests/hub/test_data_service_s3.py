"""An S3 store on the hub: the hub config hands the data service the store, its catalog and its
credentials, and the credentials stay the service account's.

``test_hub_config_passes_an_s3_store_on`` loads ``hub_config/jupyterhub_config.py`` with traitlets
as the hub does (as root: it creates the service's account) and checks what it passes on and
what it refuses.  ``test_the_hub_serves_an_s3_store`` starts the real stack on moto's S3 server:
a member reads the same voxels through the service (by presigned URLs), an outsider is refused,
a curator deletes a volume from the bucket, and the secret is in no process environment and in
no file a user may read.

Needs root (unix accounts).
"""

from __future__ import annotations

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
from tests.processes import moto_s3

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "extensions"))

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="unix accounts need root"),
    pytest.mark.filterwarnings("ignore:Use setlocale:DeprecationWarning"),  # nativeauthenticator
]

SECRET = f"s3-secret-{secrets.token_hex(8)}"


def _options_file(folder: Path, endpoint: str, mode: int = 0o600) -> Path:
    path = folder / "s3-options.json"
    path.write_text(json.dumps({"key": "vhkey", "secret": SECRET, "endpoint_url": endpoint}))
    os.chmod(path, mode)
    return path


@pytest.fixture
def s3_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_account: str) -> Path:
    for key in list(os.environ):
        if key.startswith("VOXELHUB_") and key not in (
            "VOXELHUB_DATA_USER",
            "VOXELHUB_EXCHANGE_USER",
        ):
            monkeypatch.delenv(key)
    (tmp_path / "catalog").mkdir()
    monkeypatch.setenv("VOXELHUB_HUB_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("VOXELHUB_STORE", "s3://bucket/store")
    monkeypatch.setenv("VOXELHUB_DATA_CATALOG_URL", f"sqlite:///{tmp_path}/catalog/catalog.sqlite")
    options = _options_file(tmp_path, "http://127.0.0.1:9")
    monkeypatch.setenv("VOXELHUB_DATA_STORAGE_OPTIONS_FILE", str(options))
    monkeypatch.setenv("VOXELHUB_DATA_PRESIGN_SECONDS", "30")
    return tmp_path


def _load() -> Any:
    from traitlets.config.loader import PyFileConfigLoader

    return PyFileConfigLoader("jupyterhub_config.py", path=str(REPO / "hub_config")).load_config()


def test_hub_config_passes_an_s3_store_on(
    s3_env: Path, monkeypatch: pytest.MonkeyPatch, data_account: str
) -> None:
    from voxelhub_data.app import DataService

    c = _load()
    data = next(s for s in c.JupyterHub.services if s["name"] == "voxelhub-data")
    env = data["environment"]
    options = s3_env / "s3-options.json"
    assert env["VOXELHUB_DATA_STORE"] == "s3://bucket/store"
    assert env["VOXELHUB_DATA_CATALOG_URL"] == f"sqlite:///{s3_env}/catalog/catalog.sqlite"
    assert env["VOXELHUB_DATA_STORAGE_OPTIONS_FILE"] == str(options)
    assert env["VOXELHUB_DATA_PRESIGN_SECONDS"] == "30"
    # only the path travels: the secret is nowhere in the hub's configuration
    assert SECRET not in json.dumps(c, default=str)
    account = pwd.getpwnam(data_account)
    st = options.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (account.pw_uid, 0o600)
    folder = (s3_env / "catalog").stat()
    assert (folder.st_uid, folder.st_mode & 0o777) == (account.pw_uid, 0o700)
    # kernels get the service's URL and nothing of the store's settings
    kernel = c.Spawner.environment
    assert kernel["VOXELHUB_STORE"].endswith("/services/voxelhub-data")
    assert not {k for k in kernel if k.startswith("VOXELHUB_DATA_")}

    # the service reads its options from the file, and refuses one others may read
    service = DataService(storage_options_file=str(options), storage_options={"anon": False})
    assert service.store_options() == {
        "key": "vhkey",
        "secret": SECRET,
        "endpoint_url": "http://127.0.0.1:9",
        "anon": False,
    }
    os.chmod(options, 0o640)
    with pytest.raises(SystemExit, match="readable by others"):
        service.store_options()

    # what the hub refuses to start with, each naming the setting
    with pytest.raises(SystemExit, match=r"readable by others.*rotate"):
        _load()
    os.chmod(options, 0o600)
    for name, value, message in (
        ("VOXELHUB_DATA_CATALOG_URL", "", "set VOXELHUB_DATA_CATALOG_URL"),
        ("VOXELHUB_DATA_CATALOG_URL", f"sqlite:///{s3_env}/catalog.sqlite", "holds more than"),
        ("VOXELHUB_DATA_PRESIGN_SECONDS", "7200", "0-3600"),
        ("VOXELHUB_DATA_STORAGE_OPTIONS_FILE", str(s3_env / "nope.json"), "does not exist"),
    ):
        with monkeypatch.context() as m:
            m.setenv(name, value)
            with pytest.raises(SystemExit, match=message):
                _load()
    other = subprocess.run(["id", "-u", "nobody"], capture_output=True, text=True, check=True)
    os.chown(options, int(other.stdout), -1)
    with pytest.raises(SystemExit, match="only root or"):
        _load()


# -- the real stack on moto's S3 ------------------------------------------------------------------

S = secrets.token_hex(3)
ADMIN, ALICE, BOB, CAROL = f"s3adm{S}", f"s3a{S}", f"s3b{S}", f"s3c{S}"
PROJECT, OTHER = f"ct{S}", f"mr{S}"
GROUPS = {PROJECT: [ALICE, CAROL], f"{PROJECT}:curator": [CAROL], OTHER: [BOB]}
ACCOUNT = f"vhs3d{S}"


def _wait_for(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        assert proc.poll() is None, f"{url}: exited with {proc.returncode}"
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise AssertionError(f"nothing answers at {url}")


@pytest.fixture
def moto() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_hub_serves_an_s3_store(moto: str) -> None:
    import psutil
    import s3fs
    from voxelhub_hub.client import HubBrowser
    from voxelhub_hub.project_groups import remove_group
    from voxelhub_hub.stack import HubStack
    from voxelhub_hub.system_users import (
        ensure_account,
        remove_account,
        remove_managed_group_if_unused,
    )

    import voxelhub
    from voxelhub.errors import AccessDenied, NotFound

    state = Path(tempfile.mkdtemp(prefix="vhs3state-"))
    os.chmod(state, 0o755)  # the service's account passes through to its catalog folder
    stack: HubStack | None = None
    try:
        options = _options_file(state, moto)
        fs = s3fs.S3FileSystem(
            key="vhkey", secret=SECRET, endpoint_url=moto, skip_instance_cache=True
        )
        bucket = f"vh-{secrets.token_hex(5)}"
        fs.mkdir(bucket)
        url = f"s3://{bucket}/store"
        (state / "catalog").mkdir()
        catalog_url = f"sqlite:///{state}/catalog/catalog.sqlite"
        direct = {"key": "vhkey", "secret": SECRET, "endpoint_url": moto}
        for i in range(2):
            write_series(state / "dicom" / str(i), slices=8, rows=32, columns=32, seed=i,
                         patient_id=f"S3P{i}")  # fmt: skip
        report = voxelhub.ingest(
            state / "dicom",
            voxelhub.open_location(url, direct),
            project=PROJECT,
            catalog_url=catalog_url,
            progress=False,
        )
        assert len(report.written) == 2, report.summary()
        local = voxelhub.open_catalog(url, catalog_url=catalog_url, storage_options=direct)
        rows = local.series()
        expected = {uid: np.asarray(local.open_series(uid)) for uid in rows.volume_uid}
        paths = dict(zip(rows.volume_uid, rows.store_path, strict=True))
        local.close()

        stack = HubStack(
            state / "hub",
            store=url,
            admins=[ADMIN],
            projects=GROUPS,
            spawner="system",
            tls=True,
            extra_env={
                "VOXELHUB_DATA_USER": ACCOUNT,
                "VOXELHUB_DATA_CATALOG_URL": catalog_url,
                "VOXELHUB_DATA_STORAGE_OPTIONS_FILE": str(options),
                "VOXELHUB_DATA_PRESIGN_SECONDS": "30",
            },
        )
        stack.start(timeout=180)
        admin = HubBrowser(stack.url, stack.verify)
        password = secrets.token_urlsafe(18)
        admin.signup(ADMIN, password)
        admin.login(ADMIN, password, next_url="/hub/home")
        tokens = {}
        for name in (ADMIN, ALICE, BOB, CAROL):
            body = {"note": "s3 test", "expires_in": 3600}
            tokens[name] = admin.api("POST", f"/users/{name}/tokens", json=body)["token"]

        def catalog(user: str) -> Any:
            return voxelhub.open_catalog(stack.data_url, storage_options={"token": tokens[user]})

        # a member reads the same voxels from the bucket, through the hub's data service
        alice = catalog(ALICE)
        assert set(alice.series().volume_uid) == set(expected)
        for uid, voxels in expected.items():
            np.testing.assert_array_equal(np.asarray(alice.open_series(uid)), voxels)
        headers = {"Authorization": f"token {tokens[ADMIN]}"}
        audit = requests.get(
            stack.data_url + "/api/audit",
            params={"user": ALICE, "action": "volume.presign"},
            headers=headers,
            timeout=30,
        )
        assert audit.status_code == 200 and audit.json()["records"], audit.text  # presigned
        with pytest.raises((AccessDenied, NotFound)):
            catalog(BOB).open_series(next(iter(expected)))
        assert catalog(BOB).series().empty

        # a curator deletes a volume: its keys leave the bucket
        doomed = sorted(expected)[0]
        assert fs.exists(f"{bucket}/store/{paths[doomed]}/zarr.json")
        with pytest.raises(AccessDenied, match="viewer"):
            alice.delete_volume(doomed)
        catalog(CAROL).delete_volume(doomed)
        assert not fs.exists(f"{bucket}/store/{paths[doomed]}")
        assert fs.exists(f"{bucket}/store/{paths[sorted(expected)[1]]}/zarr.json")
        assert list(alice.series().volume_uid) == sorted(expected)[1:]

        # the credentials: the account's file alone, in no process's environment
        st = options.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (pwd.getpwnam(ACCOUNT).pw_uid, 0o600)
        service = [p for p in stack.processes() if "voxelhub_data" in " ".join(p.cmdline())]
        assert service and all(p.username() == ACCOUNT for p in service)
        for proc in stack.processes():
            try:
                environment = json.dumps(proc.environ())
            except psutil.NoSuchProcess:
                continue
            assert SECRET not in environment, proc.cmdline()
        ensure_account(ALICE)
        probe = subprocess.run(
            ["runuser", "-u", ALICE, "--", "cat", str(options)], capture_output=True, text=True
        )
        assert probe.returncode != 0 and SECRET not in probe.stdout
        assert "Permission denied" in probe.stderr
    finally:
        if stack is not None:
            stack.stop()
        for name in (ADMIN, ALICE, BOB, CAROL):
            remove_account(name)
        remove_managed_group_if_unused()
        subprocess.run(["userdel", ACCOUNT], capture_output=True, check=False)
        subprocess.run(["groupdel", ACCOUNT], capture_output=True, check=False)
        for group in GROUPS:
            remove_group(group)
        shutil.rmtree(state, ignore_errors=True)
