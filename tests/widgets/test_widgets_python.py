"""Widgets driven through their Python API: state, lazy slice access, paging, features."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr

import voxelhub
from voxelhub.widgets.browser import StudyBrowser
from voxelhub.widgets.feature_panel import FeaturePanel
from voxelhub.widgets.pyramid import PyramidLevel, as_volume, levels_of
from voxelhub.widgets.slices import SliceViewer, auto_window, plane_names
from voxelhub.widgets.svgplot import scatter_svg
from voxelhub.widgets.table import png_data_uri
from voxelhub.widgets.volume3d import VolumeViewer, labels_at, nifti_bytes


class CountingArray:
    """A numpy array that records every region read from it (as dask's getter asks)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.reads: list[tuple[Any, ...]] = []

    def __getitem__(self, key: Any) -> np.ndarray:
        out = self.data[key]
        if out.size:
            self.reads.append(key)
        return out


def _chunks_touched(
    reads: list[tuple[Any, ...]], chunks: tuple[int, int, int], shape: tuple[int, ...]
) -> set[tuple[int, ...]]:
    touched: set[tuple[int, ...]] = set()
    for key in reads:
        ranges = []
        for k, c, n in zip(key, chunks, shape, strict=True):
            if isinstance(k, slice):
                start, stop, _ = k.indices(n)
                ranges.append(range(start // c, (stop - 1) // c + 1))
            else:
                ranges.append(range(int(k) // c, int(k) // c + 1))
        touched |= {(a, b, c) for a in ranges[0] for b in ranges[1] for c in ranges[2]}
    return touched


@pytest.fixture
def counted() -> tuple[SliceViewer, CountingArray]:
    rng = np.random.default_rng(0)
    base = CountingArray(rng.integers(-1000, 1000, size=(16, 64, 48), dtype=np.int16))
    volume = da.from_array(base, chunks=(4, 16, 16))
    viewer = SliceViewer.from_volume(volume, spacing=(3.0, 0.5, 0.5))
    viewer.prefetch = False
    base.reads.clear()
    return viewer, base


def _voxels(base: CountingArray) -> int:
    return sum(int(np.prod(base.data[k].shape)) for k in base.reads)


def _capture(viewer: SliceViewer) -> list[tuple[dict[str, Any], list[bytes]]]:
    sent: list[tuple[dict[str, Any], list[bytes]]] = []
    viewer.send = lambda content, buffers=None: sent.append((content, list(buffers or [])))
    return sent


def test_one_slice_reads_only_its_chunk_band(counted: tuple[SliceViewer, CountingArray]) -> None:
    viewer, base = counted
    shape = base.shape
    axial = viewer.slice("z", 5)
    assert axial.shape == (64, 48)
    np.testing.assert_array_equal(axial, base.data[5])
    # z = 5 lies in z-chunk 1: one chunk-aligned read of that slab's 4 × 3 chunks, nothing else
    assert _chunks_touched(base.reads, (4, 16, 16), shape) == {
        (1, y, x) for y in range(4) for x in range(3)
    }
    assert len(base.reads) == 1 and _voxels(base) == 4 * 64 * 48
    # a second slice in the same band reads nothing new
    base.reads.clear()
    np.testing.assert_array_equal(viewer.slice("z", 7), base.data[7])
    assert base.reads == []

    base.reads.clear()
    coronal = viewer.slice("y", 20)
    np.testing.assert_array_equal(coronal, base.data[:, 20, :])
    # y = 20 lies in y-chunk 1: the band of 16 rows across every z, and only that band
    assert _chunks_touched(base.reads, (4, 16, 16), shape) == {
        (z, 1, x) for z in range(4) for x in range(3)
    }
    assert _voxels(base) == 16 * 16 * 48
    base.reads.clear()
    for y in (16, 31, 25):
        np.testing.assert_array_equal(viewer.slice("y", y), base.data[:, y, :])
    sagittal = viewer.slice("x", 47)
    np.testing.assert_array_equal(sagittal, base.data[:, :, 47])
    assert _chunks_touched(base.reads, (4, 16, 16), shape) == {
        (z, y, 2) for z in range(4) for y in range(4)
    }
    assert viewer.reads == [
        ("image", 0, 0, 4, 8),
        ("image", 0, 1, 16, 32),
        ("image", 0, 2, 32, 48),
    ]
    base.reads.clear()
    viewer.slice("z", 5)  # still cached: no second read
    assert base.reads == []


def test_band_cache_never_exceeds_its_budget(counted: tuple[SliceViewer, CountingArray]) -> None:
    viewer, base = counted
    band = {0: 4 * 64 * 48 * 2, 1: 16 * 16 * 48 * 2, 2: 16 * 64 * 16 * 2}  # bytes per band
    viewer.cache_bytes = 2 * band[1] + 1000  # two coronal bands, or a few axial/sagittal
    for axis in (0, 1, 2):
        for index in range(base.shape[axis]):
            np.testing.assert_array_equal(
                viewer.slice(axis, index), np.take(base.data, index, axis=axis)
            )
            assert viewer.cache.nbytes <= viewer.cache_bytes
    assert viewer.cache.peak <= viewer.cache_bytes
    assert viewer.cache.peak > max(band.values())  # it did cache, up to the budget
    # shrinking the budget evicts at once; a band larger than the budget is never cached
    viewer.cache_bytes = band[0] - 1
    assert viewer.cache.nbytes <= band[0] - 1
    base.reads.clear()
    viewer.slice("z", 9)
    viewer.slice("z", 10)
    assert base.reads == [(9, slice(None), slice(None)), (10, slice(None), slice(None))]
    assert viewer.cache.nbytes <= viewer.cache_bytes and viewer.cache.peak <= 2 * band[1] + 1000
    viewer.cache_bytes = 0
    assert len(viewer.cache) == 0


def test_scrolling_prefetches_the_next_band(counted: tuple[SliceViewer, CountingArray]) -> None:
    viewer, base = counted
    viewer.prefetch = True
    sent = _capture(viewer)
    for index in (5, 6):
        viewer._on_msg(viewer, {"type": "slice", "axis": 0, "index": index, "preview": False}, [])
    viewer.wait_prefetch(timeout=10)
    # moving up from 5 to 6 read band 4:8 for the slices and band 8:12 in the background
    assert viewer.reads == [("image", 0, 0, 4, 8), ("image", 0, 0, 8, 12)]
    base.reads.clear()
    viewer._on_msg(viewer, {"type": "slice", "axis": 0, "index": 8, "preview": False}, [])
    np.testing.assert_array_equal(
        np.frombuffer(sent[-1][1][0], dtype="<i2").reshape(64, 48), base.data[8]
    )
    viewer.wait_prefetch(timeout=10)
    assert [k[0] for k in base.reads] == [slice(12, 16)]  # only the next band, ahead
    # scrolling down prefetches the band below
    viewer._on_msg(viewer, {"type": "slice", "axis": 0, "index": 4, "preview": False}, [])
    viewer.wait_prefetch(timeout=10)
    assert viewer.reads[-1] == ("image", 0, 0, 0, 4)


def test_slice_requests_coarse_level_first_then_full(tmp_path: Path) -> None:
    full = np.arange(8 * 32 * 32, dtype=np.int16).reshape(8, 32, 32)
    vol = as_volume(da.from_array(full, chunks=(4, 16, 16)), (2.0, 1.0, 1.0))
    coarse = as_volume(full[:, ::4, ::4], (2.0, 4.0, 4.0))
    mask = np.zeros_like(full, dtype=np.uint8)
    mask[3, 8:16, 8:16] = 2
    viewer = SliceViewer(
        [PyramidLevel(vol, (1, 1, 1)), PyramidLevel(coarse, (1, 4, 4))], mask, display_size=8
    )
    sent = _capture(viewer)
    viewer._on_msg(viewer, {"type": "slice", "axis": 0, "index": 3, "seq": 7}, [])
    assert [(m["level"], m["final"], m["shape"]) for m, _ in sent] == [
        (1, False, [8, 8]),
        (0, True, [32, 32]),
    ]
    header, buffers = sent[1]
    assert header["dtype"] == "int16" and header["mask_dtype"] == "uint8" and header["seq"] == 7
    np.testing.assert_array_equal(np.frombuffer(buffers[0], dtype="<i2").reshape(32, 32), full[3])
    coarse_mask = np.frombuffer(sent[0][1][1], dtype=np.uint8).reshape(8, 8)
    assert coarse_mask[2:4, 2:4].tolist() == [[2, 2], [2, 2]] and coarse_mask.sum() == 8
    # the next slice's full-resolution band is in memory already: no preview
    sent.clear()
    viewer._on_msg(viewer, {"type": "slice", "axis": 0, "index": 2, "seq": 8}, [])
    assert [(m["level"], m["final"]) for m, _ in sent] == [(0, True)]
    # on opening, the browser asks for the previews alone first (full resolution follows)
    sent.clear()
    viewer._on_msg(viewer, {"type": "slice", "axis": 1, "index": 5, "full": False}, [])
    assert [(m["level"], m["final"]) for m, _ in sent] == [(1, False)]
    # malformed requests are ignored, out-of-range indices clamped
    viewer._on_msg(viewer, {"type": "slice"}, [])
    viewer._on_msg(viewer, {"type": "slice", "axis": 2, "index": 999}, [])
    assert sent[-1][0]["index"] == 31


def test_window_presets_scroll_probe_and_aspect() -> None:
    data = np.zeros((10, 20, 30), dtype=np.int16)
    data[4, 5, 6] = 123
    affine = np.diag([0.5, 0.7, 3.0, 1.0])
    affine[:3, 3] = [10.0, 20.0, 30.0]
    vol = xr.DataArray(
        data,
        dims=("z", "y", "x"),
        coords={"z": np.arange(10) * 3.0, "y": np.arange(20) * 0.7, "x": np.arange(30) * 0.5},
        attrs={
            "modality": "CT",
            "units": "HU",
            "spacing_zyx": [3.0, 0.7, 0.5],
            "affine_lps": affine.tolist(),
            "window_presets": {"lung": (-600.0, 1500.0), "abdomen": (40.0, 400.0)},
            "flags": [],
        },
    )
    viewer = SliceViewer.from_volume(vol)
    assert viewer.preset == "abdomen" and (viewer.window_center, viewer.window_width) == (
        40.0,
        400.0,
    )
    viewer.preset = "lung"
    assert (viewer.window_center, viewer.window_width) == (-600.0, 1500.0)
    assert viewer.spacing == [3.0, 0.7, 0.5]  # the browser sizes each plane by these (mm)
    assert viewer.cursor == [5, 10, 15]
    viewer.scroll("z", 100)
    assert viewer.cursor[0] == 9
    viewer.scroll(0, -3)
    assert viewer.cursor[0] == 6
    probe = viewer.probe(4, 5, 6)
    assert probe["value"] == 123.0
    assert probe["lps_mm"] == pytest.approx([10 + 6 * 0.5, 20 + 5 * 0.7, 30 + 4 * 3.0])
    assert viewer.plane_names == ["axial", "coronal", "sagittal"]
    viewer.label_colors = {"1": "#00ff00"}
    viewer.opacity = 0.8
    with pytest.raises(ValueError):
        viewer.slice(3, 0)


def test_mr_window_is_automatic_from_percentiles() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(500, 100, size=(6, 16, 16)).astype(np.float32)
    viewer = SliceViewer.from_volume(data, spacing=(1.0, 1.0, 1.0))
    lo, hi = np.percentile(data, [1, 99])
    assert viewer.preset == "auto"
    assert viewer.window_width == pytest.approx(hi - lo, rel=0.05)
    assert auto_window(np.array([np.nan, 1.0, 3.0]))[1] > 0
    sagittal_stack = np.eye(4)
    sagittal_stack[:3, :3] = [[0, 0, 1], [1, 0, 0], [0, -1, 0]]  # x→P, y→I, z (normal)→L
    assert plane_names(sagittal_stack) == ["sagittal", "axial", "coronal"]


def test_store_pyramid_and_real_slices(real_store: Path) -> None:
    cat = voxelhub.open_catalog(real_store)
    row = cat.series(modality="CT", text="BRAIN").iloc[0]
    volume = voxelhub.open_series(row, catalog=cat)
    levels = levels_of(volume, cat)
    assert len(levels) >= 3 and levels[0].shape == tuple(volume.shape)
    assert max(levels[-1].shape[1:]) <= 64
    viewer = SliceViewer.from_volume(volume, catalog=cat, display_size=300)
    sent = _capture(viewer)
    viewer._on_msg(viewer, {"type": "slice", "axis": 0, "index": 70}, [])
    assert [m["level"] for m, _ in sent] == [1, 0]
    assert sent[-1][0]["shape"] == [512, 512]
    np.testing.assert_array_equal(
        np.frombuffer(sent[-1][1][0], dtype="<i2").reshape(512, 512), np.asarray(volume[70])
    )


def test_browser_pages_filters_thumbnails_and_opens_viewer(
    real_store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from voxelhub.store.stored import StoredVolume

    cat = voxelhub.open_catalog(real_store)
    total = len(cat.series())
    levels_read: list[int] = []
    real_open = StoredVolume.open

    def spy(self: StoredVolume, level: int = 0) -> Any:
        levels_read.append(level)
        return real_open(self, level)

    monkeypatch.setattr(StoredVolume, "open", spy)
    browser = StudyBrowser(cat, page_size=3)
    assert len(browser.table.rows) == 3 and not browser.next_button.disabled
    assert len(browser.table.thumbnails) == 3
    assert all(t["src"].startswith("data:image/png;base64,") for t in browser.table.thumbnails)
    # thumbnails come from each series' smallest level (≤ 64 px), never from full resolution
    thumbnail_levels, smallest = list(levels_read), []
    for row in browser.rows:
        levels = cat.stored_volume(row).levels
        assert max(levels[-1].shape[-2:]) <= 64
        smallest.append(len(levels) - 1)
    assert thumbnail_levels == smallest and any(n > 0 for n in smallest)
    monkeypatch.undo()
    browser.go(1)
    assert browser.page == 1 and browser.prev_button.disabled is False
    browser.go(99)  # past the end: back to the last page
    assert browser.rows and browser.page == (total - 1) // 3
    browser.flag.value = "gantry_tilt"
    assert browser.page == 0 and browser.rows
    assert all("gantry_tilt" in r["flags"] for r in browser.table.rows)
    assert all("[gantry_tilt]" in r["reasons"] for r in browser.table.rows)
    browser.flag.value = ""
    browser.modality.value = "MR"
    assert {r["modality"] for r in browser.table.rows} == {"MR"}
    uid = browser.table.rows[0]["volume_uid"]
    browser.select(uid)
    assert isinstance(browser.viewer, SliceViewer)
    assert browser.viewer_box.children == (browser.viewer,)
    assert browser.selected == uid and "MR" in browser.details.value
    browser.search.value = "no such description anywhere"
    assert browser.rows == [] and browser.next_button.disabled


def _many_series(folder: Path, n: int) -> Any:
    """A catalog of ``n`` series rows (no pixels behind them), every 100th flagged."""
    from voxelhub.catalog import Patient, Project, Study, Volume

    folder.mkdir()
    cat = voxelhub.open_catalog(folder)
    with cat.session() as s:
        project = Project(name="big")
        s.add(project)
        s.flush()
        patient = Patient(project_id=project.id, patient_key="p")
        s.add(patient)
        s.flush()
        study = Study(patient_id=patient.id, study_uid="1.2.3")
        s.add(study)
        s.flush()
        s.add_all(
            Volume(
                volume_uid=f"v{i:05d}",
                study_id=study.id,
                series_uid=f"s{i}",
                series_number=i,
                modality="CT" if i % 2 else "MR",
                description=f"series {i}",
                slices=1,
                rows=1,
                columns=1,
                spacing_z=1,
                spacing_y=1,
                spacing_x=1,
                dtype="int16",
                flags=["gantry_tilt"] if i % 100 == 0 else [],
                reasons="[gantry_tilt] tilted" if i % 100 == 0 else "",
                store_path=f"none/{i}",
                checksum="",
                content_key="",
                n_instances=1,
            )
            for i in range(n)
        )
    return cat


def test_browser_pages_ten_thousand_series_in_sql(tmp_path: Path) -> None:
    cat = _many_series(tmp_path / "big", 10_000)
    start = time.perf_counter()
    browser = StudyBrowser(cat, page_size=25, thumbnails=False, viewer=None)
    browser.go(200)
    browser.flag.value = "gantry_tilt"
    browser.go(3)
    elapsed = time.perf_counter() - start
    assert len(browser.table.rows) == 25 and elapsed < 3.0, elapsed
    assert all(r["flags"] == ["gantry_tilt"] for r in browser.table.rows)
    assert browser.next_button.disabled  # 100 flagged series: page 4 of 4


class _Recording:
    """A real catalog whose ``series`` calls are written down."""

    def __init__(self, catalog: Any) -> None:
        self.catalog = catalog
        self.calls: list[dict[str, Any]] = []

    def series(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self.catalog.series(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.catalog, name)


def test_browser_pages_by_cursor(tmp_path: Path) -> None:
    cat = _many_series(tmp_path / "cat", 310)
    recording = _Recording(cat)
    browser = StudyBrowser(recording, page_size=25, thumbnails=False, viewer=None)
    for page in range(1, 4):  # the ▶ button, page after page
        browser.next_button.click()
        assert browser.page == page
        assert recording.calls[-1].get("after") and not recording.calls[-1].get("offset")
        expected = cat.series(limit=25, offset=25 * page)["volume_uid"].tolist()
        assert [r["volume_uid"] for r in browser.rows] == expected
    browser.prev_button.click()  # back: the cursor kept for page 2
    assert browser.page == 2 and recording.calls[-1].get("after")
    assert [r["volume_uid"] for r in browser.rows] == cat.series(limit=25, offset=50)[
        "volume_uid"
    ].tolist()
    browser.go(40)  # past the end: one query by offset, then on by cursors to the last page
    assert browser.page == 12 and len(browser.rows) == 10 and browser.next_button.disabled
    assert [r["volume_uid"] for r in browser.rows] == cat.series(limit=25, offset=300)[
        "volume_uid"
    ].tolist()
    offsets = [c for c in recording.calls if c.get("offset")]
    assert [c["offset"] for c in offsets] == [1000]
    browser.modality.value = "CT"  # new filters: cursors start again
    assert browser.page == 0 and recording.calls[-1].get("after") is None
    browser.next_button.click()
    assert {r["modality"] for r in browser.rows} == {"CT"} and recording.calls[-1]["after"]
    assert [r["volume_uid"] for r in browser.rows] == cat.series(
        modality="CT", limit=25, offset=25
    )["volume_uid"].tolist()
    cat.close()


def test_volume_viewer_level_affine_and_mask(real_store: Path) -> None:
    import nibabel as nib

    cat = voxelhub.open_catalog(real_store)
    row = cat.series(modality="CT", text="BRAIN").iloc[0]
    volume = voxelhub.open_series(row, catalog=cat)
    viewer = VolumeViewer.from_volume(volume, mask=volume > 300, catalog=cat, max_voxels=2_000_000)
    assert int(np.prod(viewer.level.shape)) <= 2_000_000 and viewer.level_index > 0
    assert len(viewer.niivue.volumes) == 2
    image = nib.Nifti1Image.from_bytes(nifti_bytes(viewer.level.data))
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(viewer.level.data.attrs["affine_lps"])
    np.testing.assert_allclose(image.affine, expected, atol=1e-4)
    assert image.shape == viewer.level.shape[::-1]
    assert viewer.mask_level is not None and int(viewer.mask_level.max()) == 1
    viewer.mode.value = "render"
    labels = labels_at(np.arange(64).reshape(4, 4, 4) % 3, (2, 2, 2), (2, 2, 2))
    assert labels.shape == (2, 2, 2) and labels.dtype == np.uint8
    tilted = cat.series(flag="non_uniform_spacing")
    if not tilted.empty:
        with pytest.raises(voxelhub.GeometryError):
            VolumeViewer.from_volume(tilted.iloc[0], catalog=cat)


def test_feature_panel_runs_sorts_exports_and_reports_errors(
    real_store: Path, tmp_path: Path
) -> None:
    cat = voxelhub.open_catalog(real_store)
    ct = cat.series(modality="CT", text="BRAIN").iloc[0]["volume_uid"]
    mr = cat.series(modality="MR", text="MP-RAGE").iloc[0]["volume_uid"]
    panel = FeaturePanel(cat, series=[ct, mr, "no-such-volume"])
    assert set(panel.series.value) == {ct, mr}
    panel.series.options = [*panel.series.options, ("missing", "no-such-volume")]
    panel.series.value = (ct, mr, "no-such-volume")
    panel.level.value, panel.lower.value = 2, 100.0
    panel.families.value = ("intensity_statistics", "glcm")
    panel.run(wait=True)
    assert set(panel.results["volume_uid"]) == {ct, mr}
    assert panel.errors["volume_uid"].tolist() == ["no-such-volume"]
    assert "NotFound" in panel.error_box.value and "1 failed" in panel.status.value
    assert panel.progress.value == 3 and panel.run_button.disabled is False
    assert len(panel.table.rows) == 2
    panel.table.sort_by, panel.table.ascending = "stat_mean", False
    means = [r["stat_mean"] for r in panel.table.rows]
    assert means == sorted(means, reverse=True)
    assert panel.plot.value.count("<circle") == 2
    csv = panel.export(str(tmp_path / "f.csv"))
    assert pd.read_csv(csv).shape == panel.results.shape
    pq = panel.export(str(tmp_path / "f.parquet"))
    assert pd.read_parquet(pq).shape == panel.results.shape
    with pytest.raises(ValueError):
        panel.export(str(tmp_path / "f.xlsx"))


class CountingExtract:
    """The real ``extract`` of the cohort engine, counted; ``hold`` keeps one call waiting.

    ``hold = n`` makes the n-th call (1-based) signal ``entered`` and wait for ``release``
    before computing, so a test can cancel while that case is running.
    """

    def __init__(self) -> None:
        import threading

        from voxelhub.features import cohort

        self.real = cohort.extract
        self.calls = 0
        self.hold = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> pd.DataFrame:
        with self._lock:
            self.calls += 1
            n = self.calls
        if n == self.hold:
            self.entered.set()
            assert self.release.wait(60), "the test never released the held case"
        return self.real(*args, **kwargs)


@pytest.fixture
def counted_extract(monkeypatch: pytest.MonkeyPatch) -> Iterator[CountingExtract]:
    from voxelhub.features import cohort

    counter = CountingExtract()
    monkeypatch.setattr(cohort, "extract", counter)
    yield counter
    counter.release.set()  # never leave a held case (or a worker thread) waiting


@pytest.fixture(scope="module")
def three_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.dicom_factory import write_series

    root = tmp_path_factory.mktemp("panel-cohort")
    for i in range(3):
        write_series(root / "in" / f"s{i}", slices=10, patient_id=f"P{i}", seed=20 + i)
    voxelhub.ingest(root / "in", root / "store", project="panel", progress=False)
    return root / "store"


def _panel(cat: Any, uids: list[str], **kwargs: Any) -> FeaturePanel:
    panel = FeaturePanel(cat, series=uids, **kwargs)
    panel.series.options = [*panel.series.options, ("missing", "no-such-volume")]
    panel.series.value = tuple(uids)
    panel.level.value, panel.lower.value, panel.upper.value = 0, 1100.0, 3000.0
    panel.families.value = ("intensity_statistics", "glcm")
    return panel


def _as_panel_results(table: pd.DataFrame) -> pd.DataFrame:
    ok = table[table["error"].isna()].rename(columns={"series": "volume_uid"})
    return ok.drop(columns=["error"]).reset_index(drop=True)


def test_feature_panel_results_are_extract_many_results_and_failures_are_rows(
    three_series: Path,
) -> None:
    from voxelhub.features import extract, extract_many
    from voxelhub.roi import threshold

    cat = voxelhub.open_catalog(three_series)
    uids = cat.series(project="panel")["volume_uid"].tolist()
    selection = [uids[0], "no-such-volume", uids[1]]
    panel = _panel(cat, selection)
    panel.run(wait=True)
    assert panel.errors["volume_uid"].tolist() == ["no-such-volume"]
    assert panel.errors["error"].iloc[0].startswith("NotFound")
    assert list(dict.fromkeys(panel.results["volume_uid"])) == [uids[0], uids[1]]
    assert panel.status.value.startswith("2 of 3 series done, 1 failed")
    assert panel.progress.value == 3 and len(panel.table.rows) == 2

    roi, labels = panel.roi_source()
    cohort = extract_many(
        selection, roi, panel.settings(), catalog=cat, labels=labels, progress=False
    )
    assert cohort.loc[cohort["series"] == "no-such-volume", "error"].tolist() == [
        panel.errors["error"].iloc[0]
    ]
    pd.testing.assert_frame_equal(panel.results, _as_panel_results(cohort))
    # and both are the features of the volume and its threshold, computed directly
    volume = voxelhub.open_series(uids[1], catalog=cat)
    direct = extract(volume, threshold(volume, 1100.0, 3000.0), panel.settings())
    mine = panel.results[panel.results["volume_uid"] == uids[1]]
    np.testing.assert_array_equal(mine["value"].to_numpy(), direct["value"].to_numpy())
    assert mine["feature"].tolist() == direct["feature"].tolist()
    cat.close()


def test_feature_panel_run_again_resumes_a_cancelled_run(
    three_series: Path, counted_extract: CountingExtract
) -> None:
    cat = voxelhub.open_catalog(three_series)
    uids = cat.series(project="panel")["volume_uid"].tolist()
    panel = _panel(cat, uids)
    counted_extract.hold = 2
    panel.run()
    assert counted_extract.entered.wait(60), "the second case never started"
    panel.cancel()  # while case 2 runs: it finishes, case 3 never starts
    counted_extract.release.set()
    panel.wait(60)
    assert not panel.running and panel.cancel_button.disabled
    assert counted_extract.calls == 2
    assert panel.status.value.startswith("cancelled: 2 of 3 series done")
    assert panel.progress.bar_style == "warning"
    assert set(panel.results["volume_uid"]) == set(uids[:2])
    first = panel.results.copy()

    panel.run(wait=True)  # computes only the case the cancelled run did not reach
    assert counted_extract.calls == 3
    assert panel.status.value.startswith("3 of 3 series done, 0 failed")
    assert "(2 reused)" in panel.status.value
    assert panel.last_run is not None and len(panel.last_run.done) == 2
    assert list(dict.fromkeys(panel.results["volume_uid"])) == uids
    kept = panel.results[panel.results["volume_uid"].isin(uids[:2])].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, first)

    panel.run(wait=True)  # everything is stored now: nothing is computed
    assert counted_extract.calls == 3 and "(3 reused)" in panel.status.value
    panel.lower.value = 1200.0  # another ROI is another case: computed again
    panel.run(wait=True)
    assert counted_extract.calls == 6 and "reused" not in panel.status.value
    cat.close()


def test_feature_panel_cancel_on_dask_does_not_wait_for_the_running_case(
    three_series: Path, counted_extract: CountingExtract
) -> None:
    distributed = pytest.importorskip("distributed")
    cat = voxelhub.open_catalog(three_series)
    uids = cat.series(project="panel")["volume_uid"].tolist()
    with distributed.Client(
        processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0"
    ) as client:
        panel = _panel(cat, uids, client=client)
        counted_extract.hold = 1
        panel.run()
        assert counted_extract.entered.wait(60), "the first case never started"
        panel.cancel()
        panel.wait(60)  # returns although the first case is still held on the worker
        assert not panel.running and not counted_extract.release.is_set()
        assert counted_extract.calls == 1
        assert panel.status.value.startswith("cancelled: 0 of 3 series done")
        assert panel.results.empty and panel.errors.empty
        counted_extract.release.set()

        panel.run(wait=True)  # nothing was stored: all three run, on the cluster
        assert panel.errors.empty and panel.status.value.startswith("3 of 3 series done")
        assert set(panel.results["volume_uid"]) == set(uids)
    cat.close()


def test_png_and_plot_helpers() -> None:
    from PIL import Image

    uri = png_data_uri(np.arange(12, dtype=np.uint8).reshape(3, 4) * 20)
    import base64

    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.size == (4, 3) and np.asarray(img)[2, 3] == 220
    svg = scatter_svg([1, 2, float("nan")], [3, 4, 5], ["a", "b", "c"], xlabel="x<", ylabel="y")
    assert svg.count("<circle") == 2 and "x&lt;" in svg
    assert "no finite values" in scatter_svg([], [], [])


def test_feature_panel_uses_a_stored_label_as_roi(tmp_path: Path) -> None:
    from tests.dicom_factory import write_series
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
    panel = FeaturePanel(cat, series=[uid])
    panel.families.value = ("morphology",)
    panel.roi.value, panel.label.value, panel.label_value.value = "label", "lesions", 2
    panel.level.value = 0
    panel.run(wait=True)
    assert panel.errors.empty, panel.errors
    volume = panel.results.set_index("feature")["value"]["morph_vol_approx"]
    assert volume == pytest.approx(4 * 8 * 14 * 0.7 * 0.9 * 2.5)
    panel.level.value = 2
    panel.run(wait=True)
    assert "full resolution only" in panel.errors.iloc[0]["error"]
    cat.close()


def test_viewers_take_levels_and_label_levels_from_the_store(tmp_path: Path) -> None:
    """Pyramid levels, factors and label levels are the store's; labels without stored levels
    are sampled by one rule (the store's), the same in the slice viewer and the 3-D view."""
    import zarr

    from tests.dicom_factory import write_series
    from voxelhub.roi import read_labels, write_labels
    from voxelhub.store import ngff

    write_series(tmp_path / "in", slices=20, rows=150, columns=134, seed=5)
    voxelhub.ingest(tmp_path / "in", tmp_path / "store", progress=False)
    cat = voxelhub.open_catalog(tmp_path / "store")
    uid = str(cat.series().iloc[0]["volume_uid"])
    stored = cat.stored_volume(uid)
    assert len(stored.levels) >= 3
    labels = np.random.default_rng(3).integers(0, 4, size=stored.shape, dtype=np.uint8)
    write_labels(cat, uid, "seg", labels)
    stored = cat.stored_volume(uid)
    assert stored.label_levels("seg") == stored.levels  # label pyramids: the image's levels
    # a label image written before label pyramids (level 0 only) is sampled by the store's rule
    legacy = zarr.open_group(str(tmp_path / "store" / stored.labels_path("seg")), mode="a")
    image_label = dict(legacy.attrs["ome"])["image-label"]  # type: ignore[arg-type]
    for lv in stored.levels[1:]:
        del legacy[lv.path]
    level0 = ngff.Level("0", stored.levels[0].shape, (1, 1, 1))  # type: ignore[arg-type]
    ngff.write_metadata(legacy, [level0], tuple(stored.geometry.spacing_zyx), "seg")
    legacy.attrs["ome"] = {**dict(legacy.attrs["ome"]), "image-label": image_label}  # type: ignore[arg-type]
    assert [lv.path for lv in cat.stored_volume(uid).label_levels("seg")] == ["0"]
    volume = voxelhub.open_series(uid, catalog=cat)
    viewer = SliceViewer.from_volume(volume, mask=read_labels(cat, uid, "seg"), catalog=cat)
    assert [lv.factor for lv in viewer._levels] == [lv.factor for lv in stored.levels]
    assert [lv.shape for lv in viewer._levels] == [lv.shape for lv in stored.levels]
    k = len(stored.levels) - 1
    coarse = stored.levels[k]
    sampled = np.asarray(ngff.sample_labels(labels, coarse.factor, coarse.shape))
    assert sampled.shape == coarse.shape
    index = (13, 101, 77)
    for axis in range(3):
        i = min(index[axis] // coarse.factor[axis], coarse.shape[axis] - 1)
        np.testing.assert_array_equal(
            viewer.mask_slice(axis, index[axis], k), np.take(sampled, i, axis=axis)
        )
        assert (
            viewer.mask_slice(axis, index[axis], k).shape
            == viewer.slice(axis, index[axis], k).shape
        )
    view3d = VolumeViewer.from_volume(
        volume,
        mask=read_labels(cat, uid, "seg"),
        catalog=cat,
        max_voxels=int(np.prod(coarse.shape)),
    )
    assert view3d.level_index == k and view3d.mask_level is not None
    np.testing.assert_array_equal(view3d.mask_level.values, sampled)

    # a label image that stores the image's levels (as label pyramids will): those are shown
    group = zarr.open_group(str(tmp_path / "store" / stored.labels_path("seg")), mode="a")
    ome = dict(group.attrs["ome"])  # type: ignore[arg-type]
    own = {}
    for lv in stored.levels[1:]:
        level = ngff.Level(lv.path, lv.shape, lv.factor)  # type: ignore[arg-type]
        array = ngff.create_level_array(group, level, np.dtype(np.uint8))
        # another rule than the sampling above, so the test tells them apart
        own[lv.path] = (3 - np.asarray(ngff.sample_labels(labels, lv.factor, lv.shape))).astype(
            np.uint8
        )
        array[:] = own[lv.path]
    levels = [ngff.Level(lv.path, lv.shape, lv.factor) for lv in stored.levels]  # type: ignore[arg-type]
    ngff.write_metadata(group, levels, tuple(stored.geometry.spacing_zyx), "seg")
    group.attrs["ome"] = {**dict(group.attrs["ome"]), "image-label": ome["image-label"]}  # type: ignore[arg-type]
    assert cat.stored_volume(uid).label_levels("seg") == stored.levels
    viewer = SliceViewer.from_volume(volume, mask=read_labels(cat, uid, "seg"), catalog=cat)
    for axis in range(3):
        i = min(index[axis] // coarse.factor[axis], coarse.shape[axis] - 1)
        np.testing.assert_array_equal(
            viewer.mask_slice(axis, index[axis], k), np.take(own[coarse.path], i, axis=axis)
        )
    assert any(r[0] == "mask" and r[1] == k for r in viewer.reads)  # read from the stored level
    view3d = VolumeViewer.from_volume(
        volume,
        mask=read_labels(cat, uid, "seg"),
        catalog=cat,
        max_voxels=int(np.prod(coarse.shape)),
    )
    np.testing.assert_array_equal(view3d.mask_level.values, own[coarse.path])  # type: ignore[union-attr]
    cat.close()
