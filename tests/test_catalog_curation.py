"""What curators do to a local catalog: delete a volume, read and change de-identification.

The data service offers the same through ``DELETE api/volumes/<uid>`` and
``api/projects/<name>/settings`` (tests/hub/test_data_service.py); these check the catalog's
own guarantees: nothing half-deleted, and a crash between the catalog row and the tree leaves
what ``voxelhub fsck`` reports.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import voxelhub
from tests.dicom_factory import write_series
from voxelhub.catalog import Catalog, DeletedVolume
from voxelhub.errors import CatalogError, NotFound, SettingLocked
from voxelhub.fsck import check_store
from voxelhub.store.location import LocalLocation


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest) -> str | None:
    if request.param == "sqlite":
        return None
    return str(request.getfixturevalue("postgres_url"))


def _store(tmp_path: Path, catalog_url: str | None, project: str = "lab") -> Path:
    """Two patients, one series each, ingested into ``project``."""
    write_series(tmp_path / "in" / "a", slices=4, patient_id="P1", seed=1)
    write_series(tmp_path / "in" / "b", slices=5, patient_id="P2", seed=2)
    store = tmp_path / "store"
    report = voxelhub.ingest(
        tmp_path / "in", store, project=project, catalog_url=catalog_url, progress=False
    )
    assert len(report.written) == 2, report.summary()
    return store


def _feature_rows(cat: Catalog, uid: str) -> None:
    from voxelhub.features import Discretisation, Settings
    from voxelhub.features.results import COLUMNS, ResultStore

    settings = Settings(
        discretisation=Discretisation("fbs", bin_width=50.0),
        families=("intensity_statistics",),
        aggregations=("3D_avg",),
    )
    rows = [[uid, "roi", f"f{i}", "stat", 1.0, "", settings.hash, None] for i in range(3)]
    ResultStore(cat).save(pd.DataFrame(rows, columns=COLUMNS), settings)


def test_delete_removes_the_row_the_tree_its_labels_and_features(
    tmp_path: Path, catalog_url: str | None
) -> None:
    from voxelhub.roi import write_labels

    store = _store(tmp_path, catalog_url)
    cat = voxelhub.open_catalog(store, catalog_url=catalog_url)
    frame = cat.series()
    doomed, kept = frame.iloc[0], frame.iloc[1]
    stored = cat.stored_volume(doomed.volume_uid)
    write_labels(cat, stored, "tumour", np.ones(stored.shape, dtype=bool))
    assert (store / doomed.store_path / "labels" / "tumour").is_dir()
    _feature_rows(cat, doomed.volume_uid)
    _feature_rows(cat, kept.volume_uid)

    deleted = cat.delete_volume(doomed.volume_uid)
    assert deleted == DeletedVolume(
        volume_uid=doomed.volume_uid,
        store_path=doomed.store_path,
        project="lab",
        patient=doomed.patient_id,
        study_uid=doomed.study_uid,
        feature_rows=3,
    )
    assert list(cat.series().volume_uid) == [kept.volume_uid]
    assert list(cat.studies().study_uid) == [kept.study_uid]  # its study went with it
    with cat.engine.connect() as conn:
        from sqlalchemy import text

        patients = set(conn.scalars(text("SELECT patient_key FROM patients")))
        features = set(conn.scalars(text("SELECT DISTINCT series FROM radiomics_features")))
    assert patients == {kept.patient_id} and features == {kept.volume_uid}
    assert not (store / doomed.store_path).exists()
    assert (store / kept.store_path / "zarr.json").exists()
    # the full-text and flag indexes follow (their triggers): searches find the kept one only
    assert list(cat.search("synthetic").volume_uid) == [kept.volume_uid]
    assert list(cat.studies(text="synthetic").study_uid) == [kept.study_uid]
    check = check_store(cat.location, cat, verify=True)
    assert check.consistent and not check.temporaries, check.summary()
    with pytest.raises(NotFound, match="no volume or series"):
        cat.delete_volume(doomed.volume_uid)
    with pytest.raises(NotFound):
        cat.open_series(doomed.volume_uid)
    cat.close()


class _CrashingLocation(LocalLocation):
    """A store whose process dies at one step of a delete (the rename, or the removal)."""

    def __init__(self, path: Path, at: str) -> None:
        super().__init__(path)
        self.at = at

    def __reduce__(self) -> tuple[Any, ...]:
        return (_CrashingLocation, (self.root, self.at))

    def move_tree(self, src_rel: str, dst_rel: str) -> None:
        if self.at == "rename":
            raise KeyboardInterrupt("killed before the rename")
        super().move_tree(src_rel, dst_rel)

    def remove(self, rel: str) -> None:
        if self.at == "remove":
            raise KeyboardInterrupt("killed before the removal")
        super().remove(rel)


@pytest.mark.parametrize("at", ["rename", "remove"])
def test_a_crash_during_delete_leaves_what_fsck_reports(tmp_path: Path, at: str) -> None:
    store = _store(tmp_path, None)
    cat = Catalog(_CrashingLocation(store, at))
    doomed = str(cat.series().store_path.iloc[0])
    uid = str(cat.series().volume_uid.iloc[0])
    with pytest.raises(KeyboardInterrupt):
        cat.delete_volume(uid)
    assert uid not in set(cat.series().volume_uid)  # the row, the commit point, is gone
    cat.close()
    fsck = [sys.executable, "-m", "voxelhub.cli", "fsck", "--store", str(store)]
    found = subprocess.run(fsck, capture_output=True, text=True, check=False)
    assert found.returncode == 1, found.stdout
    if at == "rename":  # the whole tree, unlisted, where it was
        assert f"unlisted: {doomed}" in found.stdout
    else:  # renamed into the temporary area
        assert ".deleted" in found.stdout and doomed not in found.stdout
    repaired = subprocess.run(
        [*fsck, "--repair", "--min-age", "0"], capture_output=True, text=True, check=False
    )
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert not (store / doomed).exists() and not list((store / ".tmp").iterdir())


def test_a_split_series_is_deleted_by_volume_uid(tmp_path: Path) -> None:
    for echo in (1, 2):
        write_series(tmp_path / "in" / str(echo), slices=4, echo_number=echo, series_uid="1.2.3.4")
    store = tmp_path / "store"
    voxelhub.ingest(tmp_path / "in", store, progress=False)
    cat = voxelhub.open_catalog(store)
    volumes = list(cat.series().volume_uid)
    assert len(volumes) == 2
    with pytest.raises(NotFound, match="split into 2 volumes"):
        cat.delete_volume("1.2.3.4")
    # the data service's view: the series UID finds the project for the role check, but the
    # delete itself is refused, never resolved to one split
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "extensions"))
    from voxelhub_data.catalog_view import CatalogView, NotInCatalog

    view = CatalogView(str(store))
    found = view.volume("1.2.3.4")
    assert found is not None and found.volume_uid in volumes
    with pytest.raises(NotInCatalog, match="split into 2 volumes"):
        view.delete_volume("1.2.3.4")
    assert len(cat.series()) == 2
    view.catalog.close()
    cat.delete_volume(volumes[0])
    assert list(cat.series().volume_uid) == [volumes[1]]
    cat.close()


def test_deidentification_changes_only_while_a_project_holds_no_volumes(
    tmp_path: Path, catalog_url: str | None
) -> None:
    store = _store(tmp_path, catalog_url, project="lab")
    cat = voxelhub.open_catalog(store, catalog_url=catalog_url)
    settings = cat.project_settings("lab")
    assert (settings.deidentify, settings.volumes, settings.profile) == (False, 2, "")
    with pytest.raises(SettingLocked, match="holds identifiable data in 2 volume"):
        cat.set_project_settings("lab", deidentify=True)
    assert cat.set_project_settings("lab", deidentify=False) == settings  # no change: fine
    with pytest.raises(NotFound, match="no project 'nope'"):
        cat.project_settings("nope")
    with pytest.raises(CatalogError, match="true or false"):
        cat.set_project_settings("lab", deidentify="yes")  # type: ignore[arg-type]

    # a new project is created de-identifying, before its first ingest
    fresh = cat.set_project_settings("trial", deidentify=True)
    assert fresh.deidentify and fresh.volumes == 0 and "Confidentiality Profile" in fresh.profile
    assert cat.set_project_settings("trial", deidentify=False).deidentify is False  # empty
    cat.set_project_settings("trial", deidentify=True)
    write_series(tmp_path / "in2", slices=4, patient_id="SECRET-ID", seed=3)
    voxelhub.ingest(tmp_path / "in2", store, project="trial", catalog_url=catalog_url,
                    progress=False)  # fmt: skip
    trial = cat.series(project="trial")
    assert len(trial) == 1 and trial.patient_id.iloc[0] != "SECRET-ID"  # de-identified
    with pytest.raises(SettingLocked, match="de-identifies data in 1 volume"):
        cat.set_project_settings("trial", deidentify=False)

    # once every volume is deleted, the setting may change again
    for uid in cat.series(project="lab").volume_uid:
        cat.delete_volume(uid)
    assert cat.project_settings("lab").volumes == 0
    assert cat.set_project_settings("lab", deidentify=True).deidentify
    cat.close()


def test_the_command_line_deletes_and_sets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from voxelhub.cli import main

    store = _store(tmp_path, None)
    cat = voxelhub.open_catalog(store)
    uid, path = (str(v) for v in cat.series()[["volume_uid", "store_path"]].iloc[0])
    cat.close()
    assert main(["project", "lab", "--store", str(store)]) == 0
    assert (
        "lab: identifiable (fixed while it holds volumes); 2 volume(s)" in capsys.readouterr().out
    )
    assert main(["project", "lab", "--deidentify", "--store", str(store)]) == 2
    assert "holds identifiable data in 2 volume(s)" in capsys.readouterr().err
    assert main(["delete", uid, "--store", str(store)]) == 0
    assert f"deleted {uid} (project lab, {path}" in capsys.readouterr().out
    assert not (store / path).exists()
    assert main(["delete", uid, "--store", str(store)]) == 2
    assert "no volume or series" in capsys.readouterr().err
    assert main(["project", "new", "--deidentify", "--store", str(store)]) == 0
    assert "new: de-identified (PS3.15" in capsys.readouterr().out
