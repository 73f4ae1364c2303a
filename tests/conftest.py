"""Shared fixtures: the real data in ../shared, and small real DICOM series made with pydicom."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import settings

from tests.dicom_factory import write_series

# `make test` (CI) draws the same hypothesis examples every run, so a run's outcome is the
# code's, not the dice's; a plain pytest run explores new ones (HYPOTHESIS_PROFILE=default)
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VOXELHUB_SHARED", REPO.parent / "shared"))
DICOM = SHARED / "data" / "dicom"


@pytest.fixture(scope="session")
def shared_dicom() -> Path:
    """The real DICOM series in ../shared/data/dicom (fails loudly if it is missing)."""
    if not DICOM.is_dir():
        pytest.fail(f"real test data missing: {DICOM} (clone the repo next to shared/)")
    return DICOM


@pytest.fixture(scope="session", autouse=True)
def _secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Secrets and Dask scratch go to throwaway folders of this run, never to ~ or /tmp."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VOXELHUB_SECRETS_DIR", str(tmp_path_factory.mktemp("secrets")))
        # Dask workers' scratch space in this run's temporary folder, not in /tmp
        scratch = str(tmp_path_factory.mktemp("dask"))
        mp.setenv("DASK_TEMPORARY_DIRECTORY", scratch)
        import dask

        with dask.config.set({"temporary-directory": scratch}):
            yield


@pytest.fixture(autouse=True)
def _keep_umask() -> Iterator[None]:
    """Loading the hub's configuration sets umask 077 (meant for the hub's process); no test
    leaks that into the ones after it."""
    mask = os.umask(0o022)
    os.umask(mask)
    yield
    os.umask(mask)


@pytest.fixture(scope="session")
def real_store(tmp_path_factory: pytest.TempPathFactory, shared_dicom: Path) -> Path:
    """All of ../shared/data/dicom ingested once (identifiable project) for read-only tests."""
    from voxelhub import ingest

    store = tmp_path_factory.mktemp("real") / "store"
    report = ingest(shared_dicom, store, project="real", progress=False)
    assert not report.failed, report.summary()
    return store


__all__ = ["write_series"]


@contextmanager
def postgres_database() -> Iterator[str]:
    """A fresh, empty database on the server `make test` starts (its URL); dropped afterwards.
    Skips the test when there is no server (pytest run outside `make test`)."""
    import uuid

    from sqlalchemy import create_engine, text

    server = os.environ.get("VOXELHUB_TEST_POSTGRES_URL")
    if not server:
        pytest.skip("VOXELHUB_TEST_POSTGRES_URL unset: run through `make test` to get a server")
    name = f"vh_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test."""
    with postgres_database() as url:
        yield url


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A real S3 API (moto's server) on loopback for one test module."""
    from tests.processes import moto_s3

    with moto_s3() as url:
        yield url


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, str]]:
    """A new, empty bucket at :func:`s3_endpoint`: its name and the s3fs options reaching it
    (no AWS profile or session of the machine in the way)."""
    import uuid

    import s3fs

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    options = {"key": "test", "secret": "test", "endpoint_url": s3_endpoint}
    bucket = f"vh-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(**options, skip_instance_cache=True).mkdir(bucket)
    return bucket, options


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    """A new master key file (0600, in a private folder of the test's own)."""
    from voxelhub.store.keys import FileKeyProvider

    return FileKeyProvider.create(tmp_path / "secret" / "master.json").path


@pytest.fixture
def no_keys_left() -> Iterator[None]:
    """Forget the key ring a test gave this process (``use_keys``), whatever the outcome."""
    yield
    from voxelhub.store.encryption import use_keys

    use_keys(None)
