"""The catalog on SQLite (inside the store) and on a real PostgreSQL server (started by make)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

import voxelhub
from tests.dicom_factory import write_series
from voxelhub.catalog import Catalog
from voxelhub.store.location import open_location


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("postgres_url")


def _two_studies(root: Path) -> None:
    write_series(root / "a", slices=6, patient_id="P1", seed=1)
    write_series(root / "b", slices=5, patient_id="P2", modality="MR", seed=2)


def test_ingest_and_query(tmp_path: Path, catalog_url: str | None) -> None:
    _two_studies(tmp_path / "in")
    store = tmp_path / "store"
    report = voxelhub.ingest(
        tmp_path / "in", store, project="lab", catalog_url=catalog_url, progress=False
    )
    assert len(report.written) == 2
    cat = voxelhub.open_catalog(store, catalog_url=catalog_url)
    assert list(cat.projects()["name"]) == ["lab"]
    ct = cat.studies(modality="CT")
    assert list(ct["patient_id"]) == ["P1"] and list(ct["volumes"]) == [1]
    series = cat.series(modality="MR")
    assert len(series) == 1 and series.iloc[0]["slices"] == 5
    assert len(cat.series(study_uid=ct.iloc[0]["study_uid"])) == 1
    assert len(cat.search("synthetic")) == 2
    assert cat.search("no such words").empty
    page = cat.series(limit=1, offset=1)
    assert len(page) == 1
    volume = voxelhub.open_series(series.iloc[0], catalog=cat)
    assert volume.shape == (5, 32, 40)
    cat.close()


def test_sqlite_uses_wal_inside_the_store(tmp_path: Path) -> None:
    cat = Catalog(open_location(tmp_path / "store"))
    with cat.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    assert (tmp_path / "store" / "catalog.sqlite").exists()
    cat.close()


def test_project_deidentification_never_flips(tmp_path: Path, catalog_url: str | None) -> None:
    cat = Catalog(open_location(tmp_path / "store"), catalog_url)
    cat.ensure_project("open", deidentify=False)
    with pytest.raises(voxelhub.CatalogError, match="identifiable"):
        cat.ensure_project("open", deidentify=True)
    cat.ensure_project("safe", deidentify=True)
    with pytest.raises(voxelhub.CatalogError, match="de-identifies"):
        cat.ensure_project("safe", deidentify=False)
    cat.close()


def test_failed_volume_leaves_no_row(tmp_path: Path, catalog_url: str | None) -> None:
    """A record_volume that fails half-way (bad value) leaves no patient/study/volume row."""
    cat = Catalog(open_location(tmp_path / "store"), catalog_url)
    project = cat.ensure_project("p", deidentify=False)
    with pytest.raises(Exception):  # noqa: B017 - any database error
        cat.record_volume(
            project,
            patient={"patient_key": "X"},
            study={"study_uid": "1.2.3"},
            volume={"volume_uid": "v", "slices": None},  # NOT NULL columns missing
        )
    assert cat.series().empty
    with cat.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM patients")).scalar() == 0
        assert conn.execute(text("SELECT count(*) FROM studies")).scalar() == 0
    cat.close()


def test_unknown_series_is_a_clear_error(tmp_path: Path) -> None:
    write_series(tmp_path / "in", slices=3)
    voxelhub.ingest(tmp_path / "in", tmp_path / "store", progress=False)
    cat = voxelhub.open_catalog(tmp_path / "store")
    with pytest.raises(voxelhub.NotFound, match="no volume or series"):
        voxelhub.open_series("1.2.3.4", catalog=cat)
    with pytest.raises(voxelhub.CatalogError, match="no store"):
        voxelhub.open_catalog(tmp_path / "nowhere")
    cat.close()


def test_fsck_reports_and_repairs(tmp_path: Path) -> None:
    """`voxelhub fsck`: unlisted trees and temporaries are collected, a missing tree reported."""
    import shutil
    import subprocess
    import sys

    write_series(tmp_path / "in", slices=4)
    store = tmp_path / "store"
    voxelhub.ingest(tmp_path / "in", store, progress=False)
    cat = voxelhub.open_catalog(store)
    (row,) = cat.series().to_dict("records")
    cat.close()
    stray = store / "projects" / "default" / "x" / "stray.ome.zarr"
    shutil.copytree(store / row["store_path"], stray)
    (store / ".tmp" / "half.ome.zarr").mkdir(parents=True)

    def fsck(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "voxelhub.cli", "fsck", "--store", str(store), *extra]
        return subprocess.run(cmd, capture_output=True, text=True)

    found = fsck("--verify")
    assert found.returncode == 1 and "unlisted: projects/default/x/stray.ome.zarr" in found.stdout
    assert fsck("--repair", "--min-age", "3600").returncode == 1  # too fresh to collect
    repaired = fsck("--repair", "--verify", "--min-age", "0")
    assert repaired.returncode == 0, repaired.stdout
    assert not stray.exists() and not (store / ".tmp" / "half.ome.zarr").exists()
    shutil.rmtree(store / row["store_path"])
    missing = fsck()
    assert missing.returncode == 1 and f"missing: {row['store_path']}" in missing.stdout
