"""Label images survive a re-ingest that replaces their volume: nothing people drew is lost."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

import voxelhub
from tests.dicom_factory import write_series
from voxelhub.roi import list_labels, read_labels, write_labels


def _ingest(folder: Path, store: Path) -> voxelhub.IngestReport:
    report = voxelhub.ingest(folder, store, project="p", progress=False)
    assert not report.failed, report.summary()
    return report


def test_labels_follow_a_new_version_on_the_same_grid(tmp_path: Path) -> None:
    first = write_series(tmp_path / "a", slices=6, seed=1)
    store = tmp_path / "store"
    _ingest(tmp_path / "a", store)
    cat = voxelhub.open_catalog(store)
    uid = cat.series().iloc[0]["volume_uid"]
    mask = np.zeros((6, 32, 40), dtype=np.uint8)
    mask[2:4, 5:10, 5:10] = 1
    write_labels(cat, uid, "lesion", mask, names={1: "lesion"})
    # the same series re-sent with new instances on the same grid: a new version
    write_series(
        tmp_path / "b", slices=6, seed=2, series_uid=first.series_uid, study_uid=first.study_uid
    )
    report = _ingest(tmp_path / "b", store)
    assert report.written == [uid]
    assert list_labels(cat, uid) == ["lesion"]
    np.testing.assert_array_equal(read_labels(cat, uid, "lesion").values, mask)
    cat.close()


def test_labels_on_a_changed_grid_keep_their_old_version(tmp_path: Path) -> None:
    first = write_series(tmp_path / "a", slices=6, seed=1)
    store = tmp_path / "store"
    _ingest(tmp_path / "a", store)
    cat = voxelhub.open_catalog(store)
    row = cat.series().iloc[0]
    write_labels(cat, row["volume_uid"], "organ", np.ones((6, 32, 40), dtype=np.uint8))
    # two more slices arrive: the grid changes, the labels cannot follow
    shutil.rmtree(tmp_path / "a")
    write_series(
        tmp_path / "a", slices=8, seed=1, series_uid=first.series_uid, study_uid=first.study_uid
    )
    report = _ingest(tmp_path / "a", store)
    assert list(report.superseded) == [row["store_path"]]
    kept = store / report.superseded[row["store_path"]]
    assert (kept / "labels" / "organ").is_dir()
    assert "kept with it" in report.summary()
    new = cat.series().iloc[0]
    assert new["slices"] == 8 and list_labels(cat, new["volume_uid"]) == []
    cat.close()
