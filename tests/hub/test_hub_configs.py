"""hub_config/*.py load, name only settings that exist, and encode the deployment choices."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sys
from pathlib import Path

import pytest
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

pytestmark = pytest.mark.filterwarnings(
    "ignore:Use setlocale:DeprecationWarning"
)  # nativeauthenticator

REPO = Path(__file__).resolve().parents[2]
HUB_CONFIG = REPO / "hub_config"
sys.path.insert(0, str(REPO / "extensions"))


def load(name: str) -> Config:
    return PyFileConfigLoader(name, path=str(HUB_CONFIG)).load_config()


@pytest.fixture
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, data_account: str) -> Path:
    for key in (
        "VOXELHUB_HUB_IP",
        "VOXELHUB_CATALOG_URL",
        "VOXELHUB_HUB_SPAWNER",
        "JUPYTERHUB_SERVICE_PREFIX",
    ):
        monkeypatch.delenv(key, raising=False)
    projects = tmp_path / "projects.json"
    projects.write_text('{"lung": ["alice"], "brain": ["bob", "carol"]}')
    monkeypatch.setenv("VOXELHUB_HUB_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("VOXELHUB_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("VOXELHUB_HUB_PROJECTS", str(projects))
    monkeypatch.setenv("VOXELHUB_HUB_ADMINS", "boss")
    monkeypatch.setenv("VOXELHUB_HUB_SSL_CERT", "/etc/hub.crt")
    monkeypatch.setenv("VOXELHUB_HUB_SSL_KEY", "/etc/hub.key")
    monkeypatch.setenv("VOXELHUB_GATEWAY_PORT", "18010")
    return tmp_path


def assert_settings_exist(config: Config, classes: dict[str, type]) -> None:
    """Every section is a known class and every key one of its configurable traits."""
    for section, values in config.items():
        assert section in classes, f"unknown config section {section}"
        traits = classes[section].class_traits(config=True)
        for key in values:
            assert key in traits, f"{section}.{key} is not a setting of {classes[section].__name__}"


def test_jupyterhub_config(hub_env: Path) -> None:
    from jupyterhub.app import JupyterHub
    from jupyterhub.auth import Authenticator
    from jupyterhub.proxy import ConfigurableHTTPProxy
    from jupyterhub.spawner import LocalProcessSpawner, SimpleLocalProcessSpawner, Spawner
    from voxelhub_hub.native_auth import VoxelHubNativeAuthenticator
    from voxelhub_hub.spawner import ResourceLimits, UserSession

    c = load("jupyterhub_config.py")
    assert_settings_exist(
        c,
        {
            "JupyterHub": JupyterHub,
            "ConfigurableHTTPProxy": ConfigurableHTTPProxy,
            "NativeAuthenticator": VoxelHubNativeAuthenticator,
            "Authenticator": Authenticator,
            "Spawner": Spawner,
            "LocalProcessSpawner": LocalProcessSpawner,
            "SimpleLocalProcessSpawner": SimpleLocalProcessSpawner,
            "ResourceLimits": ResourceLimits,
            "UserSession": UserSession,
        },
    )
    assert c.JupyterHub.bind_url == "https://127.0.0.1:8000"
    assert c.JupyterHub.ssl_cert == "/etc/hub.crt"
    assert c.JupyterHub.hub_bind_url.startswith("http://127.0.0.1:")
    assert c.JupyterHub.spawner_class == "voxelhub_hub.spawner.VoxelHubSpawner"
    # before every spawn: the user's account and groups, then the store handed to the service,
    # then (a course's grader account only) a data-only token for its sandboxed kernels
    hook = c.Spawner.pre_spawn_hook
    assert hook.__name__ == "voxelhub_pre_spawn_grading_token"
    assert hook.__wrapped__.__name__ == "voxelhub_pre_spawn_data"
    assert c.ResourceLimits.process_memory_limit == "8G"
    # no --allow-root (servers run as their users); kernels on unix sockets, not TCP
    assert c.Spawner.args == ["--KernelManager.transport=ipc"]
    assert c.UserSession.session_dir == str(hub_env / "state" / "sessions")
    assert c.ResourceLimits.max_processes == 1024
    assert c.JupyterHub.cookie_secret_file.startswith(str(hub_env / "state"))
    assert c.Authenticator.admin_users == {"boss"}
    assert c.NativeAuthenticator.open_signup is False
    env = c.Spawner.environment
    # kernels reach the store through the data service, which runs as its own account
    assert env["VOXELHUB_STORE"] == "http://127.0.0.1:8020/services/voxelhub-data"
    assert "VOXELHUB_CATALOG_URL" not in env
    assert "access:services!service=voxelhub-data" in c.Spawner.server_token_scopes
    data = next(s for s in c.JupyterHub.services if s["name"] == "voxelhub-data")
    assert data["user"] == os.environ["VOXELHUB_DATA_USER"]
    assert data["environment"]["VOXELHUB_DATA_STORE"] == str(hub_env / "store")
    audit_dir = Path(data["environment"]["VOXELHUB_AUDIT_LOG"]).parent
    assert audit_dir.stat().st_mode & 0o077 == 0
    assert any(s["name"] == "voxelhub-audit-checkpoint" for s in c.JupyterHub.services)
    assert env["DASK_GATEWAY__ADDRESS"] == "http://127.0.0.1:18010/services/dask-gateway"
    # JupyterLab makes no internet requests (news, update checks) and does not offer them
    lab = Path(env["JUPYTER_CONFIG_PATH"])
    assert (
        json.loads((lab / "jupyter_server_config.json").read_text())["LabApp"]["news_url"] is None
    )
    disabled = json.loads((lab / "labconfig" / "page_config.json").read_text())
    assert disabled["disabledExtensions"]["@jupyterlab/apputils-extension:announcements"]
    assert "access:services!service=dask-gateway" in c.Spawner.server_token_scopes
    assert c.JupyterHub.load_groups == {
        "lung": {"users": ["alice"]},
        "brain": {"users": ["bob", "carol"]},
    }
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["voxelhub-project-member"]["groups"] == ["brain", "lung"]
    services = {s["name"]: s for s in c.JupyterHub.services}
    assert set(services) == {
        "idle-culler",
        "dask-gateway",
        "voxelhub-data",
        "voxelhub-audit-checkpoint",
        "voxelhub-exchange",
    }
    # nbgrader's exchange: a service under its own account, its folder closed to everyone else
    exchange = services["voxelhub-exchange"]
    assert exchange["user"] == os.environ["VOXELHUB_EXCHANGE_USER"] != data["user"]
    assert Path(exchange["cwd"]).stat().st_mode & 0o077 == 0
    assert Path(exchange["cwd"]).stat().st_uid == pwd.getpwnam(exchange["user"]).pw_uid
    assert "access:services!service=voxelhub-exchange" in c.Spawner.server_token_scopes
    assert env["VOXELHUB_EXCHANGE_URL"].endswith(":8030/services/voxelhub-exchange")
    assert services["dask-gateway"]["url"] == "http://127.0.0.1:18010"
    assert "--timeout=3600" in services["idle-culler"]["command"]


def test_simple_spawner_mode_and_plain_http_refused_off_loopback(
    hub_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXELHUB_HUB_SPAWNER", "simple")
    c = load("jupyterhub_config.py")
    assert c.JupyterHub.spawner_class == "voxelhub_hub.spawner.VoxelHubLaptopSpawner"
    assert "pre_spawn_hook" not in c.Spawner
    monkeypatch.delenv("VOXELHUB_HUB_SSL_CERT")
    monkeypatch.setenv("VOXELHUB_HUB_IP", "0.0.0.0")
    with pytest.raises(ValueError, match="plain HTTP"):
        load("jupyterhub_config.py")


@pytest.mark.parametrize(
    ("mode", "backend"), [("system", "SafeLocalBackend"), ("simple", "LaptopLocalBackend")]
)
def test_dask_gateway_config(
    hub_env: Path, monkeypatch: pytest.MonkeyPatch, mode: str, backend: str
) -> None:
    from dask_gateway_server.app import DaskGateway
    from dask_gateway_server.auth import JupyterHubAuthenticator
    from dask_gateway_server.backends.base import ClusterConfig
    from dask_gateway_server.proxy import Proxy
    from voxelhub_hub import gateway_backend

    monkeypatch.setenv("VOXELHUB_HUB_SPAWNER", mode)
    c = load("dask_gateway_config.py")
    cls = getattr(gateway_backend, backend)
    assert_settings_exist(
        c,
        {
            "DaskGateway": DaskGateway,
            "Proxy": Proxy,
            "ClusterConfig": ClusterConfig,
            backend: cls,
            "JupyterHubAuthenticator": JupyterHubAuthenticator,
        },
    )
    assert c.DaskGateway.backend_class == f"voxelhub_hub.gateway_backend.{backend}"
    assert c[backend].clusters_directory == str(hub_env / "state" / "dask-clusters")
    assert c.ClusterConfig.worker_cmd[-1] == "worker"
    # the stock LocalBackend is never configured (it chowns "/" as root in 2026.3.0)
    assert "LocalBackend" not in c


def test_a_site_catalog_url_reaches_kernels_and_limits_can_be_lifted(
    hub_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VOXELHUB_CATALOG_URL", "postgresql+psycopg://voxelhub@db/catalog")
    monkeypatch.setenv("VOXELHUB_HUB_PROCESS_MEM", "0")
    c = load("jupyterhub_config.py")
    assert c.Spawner.environment["VOXELHUB_CATALOG_URL"].startswith("postgresql+psycopg://")
    assert c.ResourceLimits.process_memory_limit is None


def _private_checkout(tmp_path: Path) -> Path:
    private = tmp_path / "private"
    (private / "checkout").mkdir(parents=True)
    for part in ("hub_config", "extensions", "workspace"):
        shutil.copytree(
            HUB_CONFIG.parent / part,
            private / "checkout" / part,
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    private.chmod(0o700)
    return private / "checkout"


def test_a_private_checkout_publishes_what_users_import(hub_env: Path, tmp_path: Path) -> None:
    """A checkout under a mode-0700 folder (like /root): the hub copies the code users' servers,
    Gateway workers and the data service import to <state>/runtime, readable by all."""
    checkout = _private_checkout(tmp_path)
    c = PyFileConfigLoader("jupyterhub_config.py", path=str(checkout / "hub_config")).load_config()
    runtime = hub_env / "state" / "runtime"
    assert (runtime / "workspace" / "voxelhub" / "__init__.py").is_file()
    assert c.Spawner.environment["PYTHONPATH"] == str(runtime / "workspace")
    assert c.Spawner.environment["JUPYTER_CONFIG_PATH"] == str(runtime / "hub_config" / "jupyter")
    gateway = next(s for s in c.JupyterHub.services if s["name"] == "dask-gateway")
    assert gateway["environment"]["PYTHONPATH"] == str(runtime / "workspace")
    for folder, _dirs, files in os.walk(runtime):
        assert os.stat(folder).st_mode & 0o755 == 0o755
        for name in files:
            assert os.stat(os.path.join(folder, name)).st_mode & 0o777 == 0o644


def test_hub_stops_at_once_when_its_venv_is_private(
    hub_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A venv users cannot enter (``make install`` puts it under /opt/voxelhub/ for a private
    checkout; this one was made by hand): loading the config stops, naming the folder and the fix."""
    checkout = _private_checkout(tmp_path)
    monkeypatch.setattr(sys, "executable", str(checkout / ".venv" / "bin" / "python"))
    loader = PyFileConfigLoader("jupyterhub_config.py", path=str(checkout / "hub_config"))
    with pytest.raises(
        SystemExit, match=r"the venv .* is inside .*, which other unix users cannot"
    ):
        loader.load_config()


def test_a_backup_repository_starts_the_scheduled_backup_as_a_hub_service(
    hub_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voxelhub_hub.backup_schedule import BackupSchedule

    c = load("jupyterhub_config.py")
    assert "voxelhub-backup" not in [s["name"] for s in c.JupyterHub.services]
    monkeypatch.setenv("VOXELHUB_BACKUP_REPO", "s3:https://backup.example.org/voxelhub")
    monkeypatch.setenv("VOXELHUB_BACKUP_PASSWORD_FILE", "/etc/voxelhub/backup-password")
    monkeypatch.setenv("VOXELHUB_BACKUP_INTERVAL", "3600")
    monkeypatch.setenv("VOXELHUB_CATALOG_URL", "postgresql+psycopg://voxelhub@db/catalog")
    c = load("jupyterhub_config.py")
    service = next(s for s in c.JupyterHub.services if s["name"] == "voxelhub-backup")
    assert "user" not in service and "url" not in service  # root's, and no HTTP endpoint
    app = BackupSchedule()
    app.initialize(service["command"][3:])
    assert app.repository == "s3:https://backup.example.org/voxelhub"
    assert app.store == str(hub_env / "store") and app.hub_state == str(hub_env / "state")
    assert app.interval == 3600 and app.catalog_url.startswith("postgresql")
    assert app.audit_log.endswith("audit.log")


def test_every_ingest_of_the_stack_shares_one_set_of_deidentification_secrets(
    hub_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data service (uploads, pulls) and the DICOM edge (arrivals) de-identify with the same
    per-project secrets, so a patient who arrives both ways gets one pseudonym."""
    monkeypatch.setenv("VOXELHUB_DICOM_EDGE", str(hub_env / "edge.json"))
    c = load("jupyterhub_config.py")
    services = {s["name"]: s for s in c.JupyterHub.services}
    data = services["voxelhub-data"]["environment"]["VOXELHUB_SECRETS_DIR"]
    edge = services["voxelhub-dicom"]["environment"]["VOXELHUB_SECRETS_DIR"]
    assert data == edge == str(hub_env / "state" / "audit" / "secrets")
    assert "VOXELHUB_SECRETS_DIR" not in c.Spawner.environment  # users' servers never see it
