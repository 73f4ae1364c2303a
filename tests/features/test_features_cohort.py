"""extract_many: a cohort on a 2-worker LocalCluster, errors as rows, identical results after a
worker is killed, catalog selections read on the workers, results stored and resumed."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from ibsi_report import phantom

import voxelhub
from tests.dicom_factory import write_series
from voxelhub.features import Discretisation, ResultStore, Settings, extract, extract_many
from voxelhub.features.cohort import CohortRun, Finished, StoredLabels, cases

distributed = pytest.importorskip("distributed")

FAST = Settings(
    discretisation=Discretisation("fbs", bin_width=100.0),
    families=("intensity_statistics", "glcm", "glszm", "ngtdm"),
    aggregations=("3D_avg",),
)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _blob_cases(n: int, size: int = 40, seed: int = 0) -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    z, y, x = np.mgrid[:size, :size, :size]
    for i in range(n):
        image = rng.normal(40, 60, (size, size, size)).round().astype(np.int16)
        r = size / 3 + i % 3
        mask = ((z - size / 2) ** 2 + (y - size / 2) ** 2 + (x - size / 2) ** 2) <= r**2
        out.append((f"case{i}", image, mask.astype(np.uint8)))
    return out


def test_cohort_on_a_cluster_equals_extract_and_a_failing_case_is_a_row(client: object) -> None:
    items = _blob_cases(3, size=24)
    items.insert(1, ("empty", items[0][1], np.zeros_like(items[0][2])))
    table = extract_many(items, settings=FAST, client=client, spacing=(1, 1, 1), progress=False)
    assert list(table.columns) == [
        "series", "roi", "feature", "family", "value", "ibsi_tag", "settings_hash", "error"
    ]  # fmt: skip
    assert list(dict.fromkeys(table["series"])) == ["case0", "empty", "case1", "case2"]
    failed = table[table["series"] == "empty"]
    assert len(failed) == 1 and "empty" in failed["error"].iloc[0]
    for name, image, mask in (items[0], items[2]):
        expected = extract(image, mask, FAST, spacing=(1, 1, 1))
        got = table[table["series"] == name]
        assert got["error"].isna().all()
        np.testing.assert_array_equal(got["value"].to_numpy(), expected["value"].to_numpy())
        assert list(got["ibsi_tag"]) == list(expected["ibsi_tag"])


def test_label_volume_gives_one_roi_per_label_and_runs_without_a_client() -> None:
    image, mask, spacing = phantom("dig_phantom")
    labels = mask.astype(np.int16)
    labels[:, :, :2] *= 2  # split the ROI into label 1 and label 2
    table = extract_many(
        [("phantom", image, labels)],
        settings=FAST,
        labels={1: "right", 2: "left"},
        spacing=spacing,
        progress=False,
    )
    assert set(table["roi"]) == {"right", "left"}
    right = table[table["roi"] == "right"].set_index("ibsi_tag")["value"]
    expected = extract(image, labels == 1, FAST, spacing=spacing).set_index("ibsi_tag")["value"]
    pd.testing.assert_series_equal(right, expected)


def test_results_are_identical_when_a_worker_is_killed_mid_run(client: object) -> None:
    families = ("intensity_statistics", "morphology", "glcm", "glrlm", "glszm", "gldzm", "ngldm")
    settings = FAST.replace(families=families)
    items = _blob_cases(12, size=64, seed=3)  # about 0.2 s each
    start = time.monotonic()
    clean = extract_many(items, settings=settings, client=client, spacing=(1, 1, 1), progress=False)
    assert time.monotonic() - start > 0.6, "cases too quick to kill a worker inside one"
    pids = client.run(os.getpid)  # type: ignore[attr-defined]
    killed_at: list[float] = []

    def kill_when_busy() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            busy = [a for a, keys in client.processing().items() if keys]  # type: ignore[attr-defined]
            if busy and busy[0] in pids:
                time.sleep(0.05)  # let the worker get into its task
                os.kill(pids[busy[0]], signal.SIGKILL)
                killed_at.append(time.monotonic())
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    again = extract_many(items, settings=settings, client=client, spacing=(1, 1, 1), progress=False)
    returned_at = time.monotonic()
    killer.join()
    assert killed_at and killed_at[0] < returned_at, "the worker was not killed during the run"
    assert set(client.run(os.getpid).values()) != set(pids.values())  # type: ignore[attr-defined]
    assert again["error"].isna().all()
    pd.testing.assert_frame_equal(again, clean, check_exact=True)
    client.wait_for_workers(2, timeout=60)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def cohort_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("radiomics-cohort")
    for i in range(3):
        write_series(root / "in" / f"s{i}", slices=10, patient_id=f"P{i}", seed=10 + i)
    voxelhub.ingest(root / "in", root / "store", project="cohort", progress=False)
    return root / "store"


def bright(volume: object) -> object:
    """An ROI made on the worker from the volume itself (a threshold)."""
    return volume > 1200  # type: ignore[operator]


def test_catalog_selection_runs_on_workers_is_stored_and_resumes(
    client: object, cohort_store: Path
) -> None:
    cat = voxelhub.open_catalog(cohort_store)
    rows = cat.series(project="cohort")
    assert len(rows) == 3
    table = extract_many(
        rows, roi={"bright": bright}, settings=FAST, client=client, catalog=cat, save_to=cat,
        progress=False,
    )  # fmt: skip
    assert table["error"].isna().all()
    assert list(dict.fromkeys(table["series"])) == list(rows["volume_uid"])
    first = rows.iloc[0]
    volume = voxelhub.open_series(first, catalog=cat)
    expected = extract(volume, bright(volume), FAST)
    got = table[table["series"] == first["volume_uid"]]
    np.testing.assert_array_equal(got["value"].to_numpy(), expected["value"].to_numpy())

    stored = ResultStore(cat).load(FAST)
    assert len(stored) == len(table)
    assert ResultStore(cat).settings(FAST.hash) == FAST

    def never(volume: object) -> object:
        raise AssertionError("a stored case was computed again")

    seen: list[Finished] = []
    resumed = extract_many(
        rows, roi={"bright": never}, settings=FAST, catalog=cat, save_to=cat, progress=False,
        on_case=seen.append,
    )  # fmt: skip
    pd.testing.assert_frame_equal(resumed, table, check_dtype=False)
    assert [d.case.series for d in seen] == list(rows["volume_uid"])
    assert all(d.stored and not d.failed for d in seen)


def test_cancel_stops_before_the_next_case_and_keeps_what_finished() -> None:
    items = _blob_cases(4, size=16)
    run = CohortRun(cases(items, spacing=(1, 1, 1)), FAST)
    finished = []
    for done in run:
        finished.append(done.case.series)
        run.cancel()
    # (the module's cluster may be the current client: then the first to finish is any case)
    assert len(finished) == 1 and run.cancelled and run.finished == 1
    assert set(run.table()["series"]) == set(finished)
    with pytest.raises(RuntimeError, match="runs once"):
        next(iter(run))


def test_volume_uids_stored_labels_and_levels(tmp_path: Path) -> None:
    from voxelhub.roi import write_labels

    write_series(tmp_path / "in", slices=8, seed=4)
    voxelhub.ingest(tmp_path / "in", tmp_path / "store", progress=False)
    cat = voxelhub.open_catalog(tmp_path / "store")
    assert isinstance(cat, voxelhub.Catalog)  # a local store's catalog, which labels are written to
    uid = cat.series().iloc[0]["volume_uid"]
    labels = np.zeros((8, 32, 40), dtype=np.uint8)
    labels[2:6, 4:20, 4:20] = 1
    labels[2:6, 22:30, 22:36] = 2
    write_labels(cat, uid, "lesions", labels, names={1: "a", 2: "b"})
    table = extract_many(
        [uid, "no-such-volume"], StoredLabels("lesions"), FAST, catalog=cat,
        labels={1: "a", 2: "b"}, progress=False,
    )  # fmt: skip
    keys = list(dict.fromkeys(zip(table["series"], table["roi"], strict=True)))
    assert keys == [(uid, "a"), (uid, "b"), ("no-such-volume", "a"), ("no-such-volume", "b")]
    missing = table[table["series"] == "no-such-volume"]
    assert missing["error"].str.startswith("NotFound").all() and len(missing) == 2
    volume = voxelhub.open_series(uid, catalog=cat)
    for value, name in ((1, "a"), (2, "b")):
        expected = extract(volume, labels == value, FAST)
        got = table[(table["series"] == uid) & (table["roi"] == name)]
        assert got["error"].isna().all()
        np.testing.assert_array_equal(got["value"].to_numpy(), expected["value"].to_numpy())

    coarse = extract_many(
        [uid], {"lesions": StoredLabels("lesions"), "bright": bright}, FAST, catalog=cat,
        level=1, progress=False,
    )  # fmt: skip
    assert coarse["roi"].tolist() == ["lesions@level1", "bright@level1"]
    assert "full resolution only" in coarse["error"].iloc[0]
    assert "level 1 out of range" in coarse["error"].iloc[1]  # this small volume has one level
    with pytest.raises(ValueError, match="catalog selection"):
        cases(_blob_cases(1), level=1)
    with pytest.raises(TypeError, match="catalog volumes"):
        StoredLabels("lesions").read(np.zeros((2, 2, 2)))
    cat.close()
