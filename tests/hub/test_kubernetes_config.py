"""hub_config/kubernetes/: the Helm values and the Dockerfile, checked without a cluster.

What is checked, honestly:

- both values files parse, and every key they set is a key of the chart.  The charts are not
  installed here; :data:`Z2JH_KEYS` and :data:`GATEWAY_KEYS` are allow-lists written from the
  charts' ``values.yaml`` / ``values.schema.yaml`` (Zero to JupyterHub 3.x/4.x, dask-gateway
  2026.3.0) for the parts of the charts VoxelHub uses;
- both values files, merged over each chart's defaults, validate against the chart's own
  ``values.schema.yaml`` (offline copies in ``../shared/data/helm``), as ``helm lint`` does;
- the data service's manifests (``voxelhub-data.yaml``) agree with the hub's values: service
  name, generated token's Secret key, URL and port, prefix, roles; one audit file per replica;
- ``hub.config.<Class>.<trait>``: each trait exists on the class.  ``JupyterHub``,
  ``Authenticator`` and ``Spawner`` are the installed classes.  ``KubeSpawner`` and
  ``GenericOAuthenticator`` are checked against the installed class when their package is
  installed; otherwise a trait must be inherited from the installed ``Spawner`` /
  ``Authenticator`` or be on :data:`OAUTHENTICATOR_DOCUMENTED` (from the OAuthenticator 17 docs);
- the gateway's ``extraConfig`` is executed; it may only set traits of ``ClusterConfig``
  (installed; values validated by instantiating it) or ``KubeClusterConfig`` (trait names read
  from the installed source file, which needs ``kubernetes_asyncio`` to import);
- kernels get the same variables as on one machine, and (as there) reach the store only through
  the data service: no storage or database credentials in user or worker pods;
- the Dockerfile: pinned base image, only existing files copied, non-root at the end, and its
  ``sed`` of environment.yml drops exactly the editable install.

Not checked: ``helm template``, ``docker build``, a real cluster.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from traitlets.config import Config
from traitlets.config.loader import PyFileConfigLoader

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "hub_config" / "kubernetes"
HELM = Path(os.environ.get("VOXELHUB_SHARED", REPO.parent / "shared")) / "data" / "helm"
CHARTS = {
    "jupyterhub.values.yaml": "zero-to-jupyterhub",
    "dask-gateway.values.yaml": "dask-gateway",
}
ANY = "*"  # any key at this level (names of env vars, roles, services, config snippets)

#: Zero to JupyterHub keys VoxelHub may set (from the chart's values.yaml / values.schema.yaml).
#: ``hub.config`` is free-form in the chart and checked against traitlets instead.
Z2JH_KEYS = {
    "hub": {
        "config": None,  # traitlets, see test_hub_config_names_real_traits
        "extraEnv": {ANY: None},
        "extraConfig": {ANY: None},
        "existingSecret": None,
        "db": {"type": None, "url": None, "upgrade": None, "password": None, "pvc": None},
        "loadRoles": {
            ANY: {
                "description": None,
                "scopes": None,
                "users": None,
                "groups": None,
                "services": None,
            }
        },
        "services": {
            ANY: {
                "url": None,
                "apiToken": None,
                "admin": None,
                "display": None,
                "oauth_no_confirm": None,
                "oauth_redirect_uri": None,
                "info": None,
            }
        },
        "networkPolicy": {"enabled": None, "egressAllowRules": {ANY: None}},
        "concurrentSpawnLimit": None,
        "image": {"name": None, "tag": None, "pullPolicy": None},
    },
    "singleuser": {
        "image": {"name": None, "tag": None, "pullPolicy": None, "pullSecrets": None},
        "defaultUrl": None,
        "startTimeout": None,
        "cmd": None,
        "uid": None,
        "fsGid": None,
        "memory": {"limit": None, "guarantee": None},
        "cpu": {"limit": None, "guarantee": None},
        "storage": {
            "type": None,
            "capacity": None,
            "homeMountPath": None,
            "dynamic": {"storageClass": None},
            "extraVolumes": None,
            "extraVolumeMounts": None,
        },
        "extraEnv": {ANY: None},
        "networkPolicy": {
            "enabled": None,
            "egressAllowRules": {
                "cloudMetadataServer": None,
                "dnsPortsCloudMetadataServer": None,
                "dnsPortsKubeSystemNamespace": None,
                "dnsPortsPrivateIPs": None,
                "nonPrivateIPs": None,
                "privateIPs": None,
            },
            "egress": None,
        },
        "profileList": None,
    },
    "proxy": {
        "https": {
            "enabled": None,
            "type": None,
            "hosts": None,
            "letsencrypt": {"contactEmail": None, "acmeServer": None},
            "secret": {"name": None, "key": None, "crt": None},
        },
        "service": {"type": None},
    },
    "cull": {
        "enabled": None,
        "users": None,
        "adminUsers": None,
        "timeout": None,
        "every": None,
        "concurrency": None,
        "maxAge": None,
    },
    "scheduling": {"userScheduler": {"enabled": None}, "userPlaceholder": {"enabled": None}},
    "prePuller": {"hook": {"enabled": None}, "continuous": {"enabled": None}},
    "ingress": {"enabled": None, "hosts": None, "tls": None, "annotations": None},
}

#: dask-gateway chart keys VoxelHub may set (from its values.schema.yaml).
_RESOURCE = {"request": None, "limit": None}
GATEWAY_KEYS = {
    "gateway": {
        "prefix": None,
        "loglevel": None,
        "auth": {
            "type": None,
            "jupyterhub": {
                "apiToken": None,
                "apiTokenFromSecretName": None,
                "apiTokenFromSecretKey": None,
                "apiUrl": None,
            },
        },
        "backend": {
            "image": {"name": None, "tag": None, "pullPolicy": None},
            "namespace": None,
            "environment": {ANY: None},
            "scheduler": {
                "cores": _RESOURCE,
                "memory": _RESOURCE,
                "extraPodConfig": None,
                "extraContainerConfig": None,
            },
            "worker": {
                "cores": _RESOURCE,
                "memory": _RESOURCE,
                "threads": None,
                "extraPodConfig": None,
                "extraContainerConfig": None,
            },
        },
        "extraConfig": {ANY: None},
    },
    "controller": {"completedClusterMaxAge": None, "completedClusterCleanupPeriod": None},
    "traefik": {"service": {"type": None}},
}

#: OAuthenticator 17 traits of GenericOAuthenticator not inherited from jupyterhub's
#: Authenticator (https://oauthenticator.readthedocs.io/en/latest/reference/api/gen/
#: oauthenticator.generic.html); used only when oauthenticator is not installed.
OAUTHENTICATOR_DOCUMENTED = {
    "client_id",
    "client_secret",
    "oauth_callback_url",
    "authorize_url",
    "token_url",
    "userdata_url",
    "login_service",
    "scope",
    "username_claim",
    "auth_state_groups_key",
    "allowed_groups",
    "admin_groups",
    "validate_server_cert",
    "enable_pkce",
}


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((K8S / name).read_text())
    assert isinstance(data, dict), f"{name} is not a YAML mapping"
    return data


def unknown_keys(values: dict[str, Any], allowed: dict[str, Any], path: str = "") -> list[str]:
    bad = []
    for key, value in values.items():
        here = f"{path}.{key}" if path else key
        if key in allowed:
            sub = allowed[key]
        elif ANY in allowed:
            sub = allowed[ANY]
        else:
            bad.append(here)
            continue
        if sub is not None and isinstance(value, dict):
            bad.extend(unknown_keys(value, sub, here))
    return bad


def test_values_files_parse_and_set_only_chart_keys() -> None:
    hub, gateway = load("jupyterhub.values.yaml"), load("dask-gateway.values.yaml")
    assert unknown_keys(hub, Z2JH_KEYS) == [], "not keys of the Zero to JupyterHub chart"
    assert unknown_keys(gateway, GATEWAY_KEYS) == [], "not keys of the dask-gateway chart"


def _installed(module: str, cls: str) -> type | None:
    try:
        return getattr(__import__(module, fromlist=[cls]), cls)  # type: ignore[no-any-return]
    except ImportError:
        return None


def test_hub_config_names_real_traits() -> None:
    from jupyterhub.app import JupyterHub
    from jupyterhub.auth import Authenticator
    from jupyterhub.spawner import Spawner

    generic = _installed("oauthenticator.generic", "GenericOAuthenticator")
    kube = _installed("kubespawner", "KubeSpawner")
    authenticator = set(Authenticator.class_traits(config=True))
    known: dict[str, tuple[set[str], str]] = {
        "JupyterHub": (set(JupyterHub.class_traits(config=True)), "installed class"),
        "Authenticator": (authenticator, "installed class"),
        "GenericOAuthenticator": (
            (set(generic.class_traits(config=True)), "installed class")
            if generic
            else (authenticator | OAUTHENTICATOR_DOCUMENTED, "Authenticator + OAuthenticator docs")
        ),
        "KubeSpawner": (
            (set(kube.class_traits(config=True)), "installed class")
            if kube
            else (set(Spawner.class_traits(config=True)), "inherited from installed Spawner")
        ),
    }
    config = load("jupyterhub.values.yaml")["hub"]["config"]
    for section, traits in config.items():
        assert section in known, f"hub.config.{section}: no class to check it against"
        names, source = known[section]
        for trait in traits:
            assert trait in names, f"hub.config.{section}.{trait} is not a trait ({source})"
    # what the chart needs to wire the authenticator and the gateway together
    assert config["JupyterHub"]["authenticator_class"] == "generic-oauth"
    assert config["GenericOAuthenticator"]["manage_groups"] is True  # groups = projects
    assert "client_secret" not in config["GenericOAuthenticator"], "secrets come from the env"
    scopes = config["KubeSpawner"]["server_token_scopes"]
    assert "access:services!service=dask-gateway" in scopes


def _kube_cluster_config_traits() -> set[str]:
    """Trait names of KubeClusterConfig, read from the installed source (not importable here)."""
    import dask_gateway_server

    source = Path(dask_gateway_server.__file__).parent / "backends" / "kubernetes" / "backend.py"
    tree = ast.parse(source.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "KubeClusterConfig"]
    return {
        t.id
        for stmt in cls.body
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call)
        for t in stmt.targets
        if isinstance(t, ast.Name)
    }


def test_gateway_extra_config_sets_real_cluster_config_traits() -> None:
    from dask_gateway_server.backends.base import ClusterConfig

    gateway = load("dask-gateway.values.yaml")["gateway"]
    c = Config()
    for name, snippet in sorted(gateway["extraConfig"].items()):
        exec(compile(snippet, f"extraConfig.{name}", "exec"), {"c": c})  # the chart does this
    kube_only = _kube_cluster_config_traits()
    assert {"image", "worker_extra_container_config"} <= kube_only  # the parse found the class
    base = set(ClusterConfig.class_traits(config=True))
    assert set(c) == {"KubeClusterConfig"}, set(c)
    values = dict(c.KubeClusterConfig)
    unknown = set(values) - base - kube_only
    assert not unknown, f"not traits of KubeClusterConfig: {unknown}"
    # inherited values must be valid for ClusterConfig (e.g. "32 G" parses as a memory size)
    checked = ClusterConfig(**{k: v for k, v in values.items() if k in base})
    assert checked.worker_cmd == ["dask", "worker"]  # distributed 2026 has no dask-worker script
    assert checked.cluster_max_memory == 32 * 2**30


@pytest.mark.filterwarnings("ignore:Use setlocale:DeprecationWarning")  # nativeauthenticator
def test_hub_and_gateway_agree_with_each_other_and_with_one_machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_account: str
) -> None:
    # the nbgrader exchange: loading it here would make its system account; compared in
    # test_the_course_setup_matches_one_machine instead
    monkeypatch.delenv("VOXELHUB_EXCHANGE_USER", raising=False)
    hub, gateway = load("jupyterhub.values.yaml"), load("dask-gateway.values.yaml")["gateway"]
    env = hub["singleuser"]["extraEnv"]
    # the service name links the hub's generated token, the role and the route
    assert "dask-gateway" in hub["hub"]["services"]
    assert gateway["auth"]["jupyterhub"]["apiTokenFromSecretKey"] == (
        "hub.services.dask-gateway.apiToken"
    )
    assert gateway["prefix"] == "/services/dask-gateway"
    assert env["DASK_GATEWAY__ADDRESS"].endswith(gateway["prefix"])
    assert gateway["backend"]["image"] == {
        k: v for k, v in hub["singleuser"]["image"].items() if k in ("name", "tag", "pullPolicy")
    }, "workers must run the notebook's image"
    # kernels get what they get on one machine (hub_config/jupyterhub_config.py)
    for key in ("VOXELHUB_HUB_IP", "VOXELHUB_CATALOG_URL", "VOXELHUB_HUB_SPAWNER"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("VOXELHUB_HUB_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("VOXELHUB_STORE", str(tmp_path / "store"))
    monkeypatch.syspath_prepend(str(REPO / "extensions"))
    loader = PyFileConfigLoader("jupyterhub_config.py", path=str(REPO / "hub_config"))
    local = loader.load_config().Spawner.environment
    for key in local:
        if key.startswith(("DASK_GATEWAY__", "VOXELHUB_")):
            assert key in env, f"{key} is set on one machine but not on Kubernetes"
    # as on one machine, the store is the data service's URL, for kernels and workers alike
    service = hub["hub"]["services"]["voxelhub-data"]["url"]
    store = env["VOXELHUB_STORE"]
    assert store == gateway["backend"]["environment"]["VOXELHUB_STORE"]
    assert store == service + "/services/voxelhub-data"
    from voxelhub.store.location import ServiceLocation, open_location

    assert isinstance(open_location(store), ServiceLocation)
    # and nothing that would open the store or the catalog directly
    leaked = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "VOXELHUB_CATALOG_URL"}
    assert not leaked & set(env), leaked & set(env)
    assert not any(k.startswith("FSSPEC_") for k in env)
    assert "extraContainerConfig" not in gateway["backend"]["worker"]
    assert (
        "access:services!service=voxelhub-data"
        in (hub["hub"]["config"]["KubeSpawner"]["server_token_scopes"])
    )
    # no secret in the values files: secret env vars come from k8s Secrets
    assert "secretKeyRef" in hub["hub"]["extraEnv"]["OAUTH_CLIENT_SECRET"]["valueFrom"]
    assert "password" not in hub["hub"]["db"]


def _dockerfile() -> list[tuple[str, str]]:
    text = (K8S / "Dockerfile").read_text().replace("\\\n", " ")
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            steps.append((word.upper(), rest.strip()))
    return steps


def test_dockerfile_builds_from_environment_yml() -> None:
    steps = _dockerfile()
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) == 1 and re.match(r"^[\w./-]+:[\w.-]+$", froms[0]), froms
    assert not froms[0].endswith(":latest")
    for word, rest in steps:
        if word == "COPY":
            *sources, _ = [a for a in shlex.split(rest) if not a.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    users = [rest for word, rest in steps if word == "USER"]
    assert users[-1] not in ("root", "0"), "the image must not run as root"
    assert any(w == "COPY" and "environment.yml" in r for w, r in steps)
    # the image's edit of environment.yml drops the editable install and nothing else
    (sed,) = re.findall(r"sed '(/[^']+/d)'", (K8S / "Dockerfile").read_text())
    pattern = sed[1:-2]  # sed's basic regex here is also a Python regex
    original = (REPO / "environment.yml").read_text().splitlines()
    kept = [line for line in original if not re.search(pattern, line)]
    assert len(original) - len(kept) == 1 and "-e ." not in "\n".join(kept)
    env = yaml.safe_load("\n".join(kept))
    assert any(isinstance(d, dict) and "pip" in d for d in env["dependencies"])


def _merged(defaults: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """``values`` over the chart's defaults, as Helm merges them (maps merge, the rest replace)."""
    out = copy.deepcopy(defaults)
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _schema_errors(values_file: str, values: dict[str, Any] | None = None) -> list[str]:
    import jsonschema

    chart = HELM / CHARTS[values_file]
    if not (chart / "values.schema.yaml").exists():
        pytest.fail(f"chart schema missing: {chart} (clone the repo next to shared/)")
    schema = yaml.safe_load((chart / "values.schema.yaml").read_text())
    defaults = yaml.safe_load((chart / "values.yaml").read_text())
    merged = _merged(defaults, load(values_file) if values is None else values)
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in validator.iter_errors(merged)
    ]


@pytest.mark.parametrize("values_file", sorted(CHARTS))
def test_values_validate_against_the_charts_schema(values_file: str) -> None:
    assert _schema_errors(values_file) == []
    # the schema is strict where it matters: a misspelt key or a wrong type is caught
    wrong = load(values_file)
    wrong["hub" if "hub" in wrong else "gateway"]["prefixx"] = "/x"
    assert any("prefixx" in e for e in _schema_errors(values_file, wrong))
    if values_file == "jupyterhub.values.yaml":
        typed = load(values_file)
        typed["singleuser"]["startTimeout"] = "ten minutes"
        assert any("startTimeout" in e for e in _schema_errors(values_file, typed))


def _manifests() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((K8S / "voxelhub-data.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_data_service_manifests_match_the_hub_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "extensions"))
    from voxelhub_data.app import DataService

    hub = load("jupyterhub.values.yaml")["hub"]
    manifests = _manifests()
    assert set(manifests) == {"Service", "StatefulSet"}
    svc, sts = manifests["Service"], manifests["StatefulSet"]
    assert sts["spec"]["replicas"] >= 2  # stateless but for the audit trail: see the note
    assert sts["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert sts["spec"]["template"]["metadata"]["labels"].items() >= svc["spec"]["selector"].items()
    port = svc["spec"]["ports"][0]["port"]
    name = svc["metadata"]["name"]
    assert (
        hub["services"]["voxelhub-data"]["url"]
        == f"http://{name}.voxelhub.svc.cluster.local:{port}"
    )
    containers = {c["name"]: c for c in sts["spec"]["template"]["spec"]["containers"]}
    service = containers["voxelhub-data"]
    env = {e["name"]: e for e in service["env"]}
    token = env["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "hub", "key": "hub.services.voxelhub-data.apiToken"}  # Z2JH's key
    assert env["JUPYTERHUB_SERVICE_NAME"]["value"] == "voxelhub-data"
    assert env["JUPYTERHUB_SERVICE_URL"]["value"].endswith(f":{port}")
    assert env["JUPYTERHUB_CLIENT_ID"]["value"] == "service-voxelhub-data"
    assert (
        env["JUPYTERHUB_API_URL"]["value"]
        == load("dask-gateway.values.yaml")["gateway"]["auth"]["jupyterhub"]["apiUrl"]
    )
    prefix = env["JUPYTERHUB_SERVICE_PREFIX"]["value"]
    assert prefix == "/services/voxelhub-data/"
    assert service["readinessProbe"]["httpGet"]["path"] == prefix + "api/health"
    # one audit chain per replica: the pod's name in the file name, from the downward API
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["VOXELHUB_AUDIT_LOG"]["value"] == "/audit/audit-$(POD_NAME).log"
    names = [e["name"] for e in service["env"]]
    assert names.index("POD_NAME") < names.index("VOXELHUB_AUDIT_LOG")  # k8s expands only earlier
    # the environment and arguments are the service's own settings
    app = DataService()
    app.parse_command_line(service["args"])
    assert app.catalog_url.startswith("postgresql+psycopg://")
    for key in ("VOXELHUB_DATA_STORE", "VOXELHUB_AUDIT_LOG", "JUPYTERHUB_SERVICE_PREFIX"):
        assert key in env
    # the checkpointer: another account, the audit read-only, its own volume the service lacks
    checkpoint = containers["audit-checkpoint"]
    mounts = {m["name"]: m for m in checkpoint["volumeMounts"]}
    assert mounts["audit"]["readOnly"] is True and "checkpoints" in mounts
    assert "checkpoints" not in {m["name"] for m in service["volumeMounts"]}
    assert checkpoint["securityContext"]["runAsUser"] != service["securityContext"]["runAsUser"]
    assert "audit-$(POD_NAME).log" in " ".join(checkpoint["command"])
    # both run code the image copies to the folder on their PYTHONPATH
    copies = {
        rest.split()[-1]
        for word, rest in _dockerfile()
        if word == "COPY" and rest.split()[0].startswith("extensions/")
    }
    for container in (service, checkpoint):
        path = {e["name"]: e.get("value") for e in container["env"]}["PYTHONPATH"]
        packages = {"voxelhub_data"} if container is service else {"voxelhub_hub"}
        assert {f"{path}/{p}" for p in packages} <= copies, (path, copies)
    # the roles the service needs, and every user may call it (decided per project there)
    roles = hub["loadRoles"]
    assert roles["voxelhub-data"]["services"] == ["voxelhub-data"]
    assert set(roles["voxelhub-data"]["scopes"]) == {"read:users", "read:groups"}
    assert "access:services!service=voxelhub-data" in roles["user"]["scopes"]


def test_the_course_setup_matches_one_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: the nbgrader exchange as a hub service and per-course limits, as on one machine."""
    from jupyterhub.spawner import Spawner

    hub, env = load("jupyterhub.values.yaml")["hub"], load("jupyterhub.values.yaml")["singleuser"]
    docs = [d for d in yaml.safe_load_all((K8S / "voxelhub-exchange.yaml").read_text()) if d]
    manifests = {d["kind"]: d for d in docs}
    assert set(manifests) == {"Service", "StatefulSet"}
    svc, sts = manifests["Service"], manifests["StatefulSet"]
    assert sts["spec"]["replicas"] == 1  # one writer of the exchange folder
    port, name = svc["spec"]["ports"][0]["port"], svc["metadata"]["name"]
    url = f"http://{name}.voxelhub.svc.cluster.local:{port}"
    assert hub["services"]["voxelhub-exchange"]["url"] == url
    (container,) = (
        sts["template"]["spec"]["containers"]
        if "template" in sts
        else (sts["spec"]["template"]["spec"]["containers"])
    )
    cenv = {e["name"]: e for e in container["env"]}
    token = cenv["JUPYTERHUB_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "hub", "key": "hub.services.voxelhub-exchange.apiToken"}
    prefix = cenv["JUPYTERHUB_SERVICE_PREFIX"]["value"]
    assert prefix == "/services/voxelhub-exchange/"
    assert cenv["JUPYTERHUB_SERVICE_URL"]["value"].endswith(f":{port}")
    assert container["readinessProbe"]["httpGet"]["path"] == prefix + "api/health"
    assert container["command"][:3] == ["python", "-m", "voxelhub_hub.exchange_service"]
    copies = {rest.split()[-1] for word, rest in _dockerfile() if word == "COPY"}
    assert f"{cenv['PYTHONPATH']['value']}/voxelhub_hub" in copies
    mount = container["volumeMounts"][0]
    assert container["command"][3] == mount["mountPath"]  # the exchange folder is the volume
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == mount["name"]
    # user pods find it, may call it with their server token, and it may read course groups
    assert env["extraEnv"]["VOXELHUB_EXCHANGE_URL"] == url + prefix.rstrip("/")
    scope = "access:services!service=voxelhub-exchange"
    assert scope in hub["config"]["KubeSpawner"]["server_token_scopes"]
    assert scope in hub["loadRoles"]["user"]["scopes"]
    assert hub["loadRoles"]["voxelhub-exchange"]["services"] == ["voxelhub-exchange"]
    # the same as the one-machine hub's service role (hub_config/jupyterhub_config.py)
    one_machine = (REPO / "hub_config" / "jupyterhub_config.py").read_text()
    assert '"scopes": ["read:users:name", "read:users:groups"]' in one_machine
    assert set(hub["loadRoles"]["voxelhub-exchange"]["scopes"]) == {
        "read:users:name", "read:users:groups",
    }  # fmt: skip
    # nbgrader in the image uses it: the image's /etc/jupyter is hub_config/jupyter
    assert any(w == "COPY" and r.split() == ["hub_config/jupyter", "/etc/jupyter"]
               for w, r in _dockerfile())  # fmt: skip
    # per-course limits: group_overrides keyed by the course's students group, real traits
    overrides = hub["config"]["KubeSpawner"]["group_overrides"]
    traits = set(Spawner.class_traits(config=True))
    assert overrides, "no per-course limits"
    for key, override in overrides.items():
        assert all(g.endswith(":students") for g in override["groups"]), key
        assert set(override["spawner_override"]) <= traits, key
        assert set(override["spawner_override"]) >= {"mem_limit", "cpu_limit"}, key
        limited = Spawner(**override["spawner_override"])  # the values parse as the traits
        assert limited.mem_limit < 8 * 2**30  # smaller than everybody's default (singleuser)


def test_the_image_leaves_out_the_assignments_answers() -> None:
    """The image copies sample_notebooks/ for examples/; the nbgrader sources in it (answers,
    hidden tests) are excluded from the build context (issue 12)."""
    import fnmatch

    ignore = K8S / "Dockerfile.dockerignore"  # BuildKit: <Dockerfile>.dockerignore
    patterns = [
        line.strip()
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = sorted((REPO / "sample_notebooks" / "course").rglob("*.ipynb"))
    assert sources, "no assignment source to leave out"
    for path in sources:
        rel = path.relative_to(REPO).as_posix()
        parents = [rel.rsplit("/", n)[0] for n in range(rel.count("/") + 1)]
        assert any(fnmatch.fnmatch(p, pat) for p in parents for pat in patterns), rel
    copies = [r for w, r in _dockerfile() if w == "COPY" and r.startswith("sample_notebooks")]
    assert copies, "the image no longer copies sample_notebooks/: drop this exclusion"
    for example in (REPO / "sample_notebooks").glob("*.ipynb"):  # still shipped
        rel = example.relative_to(REPO).as_posix()
        assert not any(fnmatch.fnmatch(rel, pat) for pat in patterns), rel
