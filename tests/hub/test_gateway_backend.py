"""SafeLocalBackend never chowns outside a cluster's working directory (run without root).

The stock dask-gateway-server 2026.3.0 LocalBackend chowned "/" when run as root; these tests
drive our subclass with os.chown replaced by a recorder, so nothing is ever chowned for real.
"""

from __future__ import annotations

import getpass
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "extensions"))

from voxelhub_hub import gateway_backend
from voxelhub_hub.gateway_backend import SafeLocalBackend, UnsafeChown


@pytest.fixture
def chowns(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(gateway_backend.os, "chown", lambda p, *a, **k: calls.append(p))
    return calls


@pytest.fixture
def backend(tmp_path: Path) -> SafeLocalBackend:
    return SafeLocalBackend(clusters_directory=str(tmp_path / "clusters"))


def fake_cluster(name: str = "c0ffee") -> SimpleNamespace:
    return SimpleNamespace(name=name, tls_cert=b"CERT", tls_key=b"KEY", username=getpass.getuser())


def test_working_directory_chowns_exactly_its_own_files(
    backend: SafeLocalBackend, chowns: list[str]
) -> None:
    workdir = backend.setup_working_directory(fake_cluster())
    certs = os.path.join(workdir, ".certs")
    assert chowns == [
        workdir,
        certs,
        os.path.join(workdir, "logs"),
        os.path.join(certs, "dask.crt"),
        os.path.join(certs, "dask.pem"),
    ]
    assert os.stat(os.path.join(certs, "dask.pem")).st_mode & 0o777 == 0o600
    assert os.stat(workdir).st_mode & 0o777 == 0o700


def test_upstream_bug_pattern_is_refused_before_any_chown(
    backend: SafeLocalBackend, chowns: list[str]
) -> None:
    workdir = backend.setup_working_directory(fake_cluster())
    chowns.clear()
    cert = os.path.join(workdir, ".certs", "dask.crt")
    broken = [workdir, *cert]  # what paths.extend(cert) produced: "/", "t", "m", "p", ...
    with pytest.raises(UnsafeChown, match="outside the cluster directory"):
        backend.chown_inside(workdir, broken, getpass.getuser())
    with pytest.raises(UnsafeChown):
        backend.set_file_permissions(broken, getpass.getuser())
    assert chowns == []


@pytest.mark.parametrize("victim", ["/", "/etc/passwd", "{root}", "{root}/../elsewhere"])
def test_paths_outside_are_refused(
    backend: SafeLocalBackend, chowns: list[str], victim: str
) -> None:
    workdir = backend.setup_working_directory(fake_cluster())
    chowns.clear()
    path = victim.format(root=backend.clusters_directory)
    with pytest.raises(UnsafeChown):
        backend.chown_inside(workdir, [path], getpass.getuser())
    with pytest.raises(UnsafeChown):
        backend.set_file_permissions([path], getpass.getuser())
    assert chowns == []


def test_symlink_out_of_the_workdir_is_refused(
    backend: SafeLocalBackend, chowns: list[str], tmp_path: Path
) -> None:
    workdir = backend.setup_working_directory(fake_cluster())
    chowns.clear()
    link = os.path.join(workdir, "logs", "escape")
    os.symlink(tmp_path, link)
    with pytest.raises(UnsafeChown):
        backend.chown_inside(workdir, [link], getpass.getuser())
    assert chowns == []


def test_a_workdir_that_is_not_a_cluster_folder_is_refused(
    backend: SafeLocalBackend, chowns: list[str]
) -> None:
    backend.setup_working_directory(fake_cluster())
    chowns.clear()
    with pytest.raises(UnsafeChown, match="not a cluster directory"):
        backend.chown_inside("/", ["/"], getpass.getuser())
    with pytest.raises(UnsafeChown, match="escapes"):
        backend.setup_working_directory(fake_cluster(name="../../x"))
    assert chowns == []


@pytest.mark.parametrize("root", ["", "/", "relative/dir"])
def test_clusters_directory_is_required(root: str, chowns: list[str]) -> None:
    with pytest.raises(UnsafeChown, match="clusters_directory"):
        SafeLocalBackend(clusters_directory=root).setup_working_directory(fake_cluster())
    assert chowns == []
