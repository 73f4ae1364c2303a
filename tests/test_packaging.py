"""environment.yml mirrors pyproject.toml, so conda and pip users get the same stack."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI's
CONDA_NAMES = {
    "dask[distributed]": "dask",
    "psycopg[binary]": "psycopg",
    "moto[server]": "moto",
    "dask-gateway-server[local]": "dask-gateway-server",
}


def _split(req: str) -> tuple[str, str]:
    name, spec = re.match(r"^([A-Za-z0-9_.\-\[\]]+)\s*(.*)$", req.strip()).groups()  # type: ignore[union-attr]
    return CONDA_NAMES.get(name.lower(), name.lower()), spec.replace(" ", "")


def test_environment_yml_mirrors_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = dict(_split(r) for r in project["dependencies"])
    for extra in ("test", "dev", "s3", "hub", "teaching"):
        wanted.update(_split(r) for r in project["optional-dependencies"][extra])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    have: dict[str, str] = {}
    for dep in env["dependencies"]:
        items = dep["pip"] if isinstance(dep, dict) else [dep]
        for item in items:
            if item.startswith("-e") or item.startswith("python") or item == "pip":
                continue
            name, spec = _split(item)
            have[name] = spec
    if "distributed" in have:
        assert have.pop("distributed") == wanted["dask"]
    assert have == wanted


def test_lock_pins_every_runtime_dependency() -> None:
    lock = {
        line.split("==")[0].lower().replace("_", "-")
        for line in (REPO / "requirements" / "lock.txt").read_text().splitlines()
        if "==" in line
    }
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"]:
        name = re.split(r"[\[<>=! ]", req, maxsplit=1)[0].lower().replace("_", "-")
        assert name in lock, f"{name} is not pinned in requirements/lock.txt"
