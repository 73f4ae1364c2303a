"""Header indexing on pydicom's bundled files: what becomes a frame, what is refused and why."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from voxelhub.dicom.index import index, read_frames


def _bundled(name: str) -> str:
    path = get_testdata_file(name)
    assert path, f"{name} ships with pydicom's wheel"
    return str(path)


def test_single_frame_ct_gives_one_frame() -> None:
    result = read_frames(_bundled("CT_small.dcm"))
    (frame,) = result.frames
    assert frame.modality == "CT" and (frame.rows, frame.columns) == (128, 128)
    assert frame.rescale_intercept == pytest.approx(-1024.0)


def test_truncated_pixel_data_is_rejected_with_the_tag(tmp_path: Path) -> None:
    data = Path(_bundled("CT_small.dcm")).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[: len(data) - 1000])
    result = read_frames(str(tmp_path / "cut.dcm"))
    (rejected,) = result.rejected
    assert "truncated" in rejected.reason and rejected.tag == "(7FE0,0010)"


def test_classic_multiframe_without_functional_groups_is_refused_clearly() -> None:
    (rejected,) = read_frames(_bundled("rtdose.dcm")).rejected
    assert "multi-frame image without functional groups" in rejected.reason
    assert rejected.tag == "(0028,0008)"


def test_deflated_transfer_syntax_is_indexed() -> None:
    result = read_frames(_bundled("image_dfl.dcm"))
    assert len(result.frames) == 1 and not result.rejected


def test_non_dicom_is_skipped_not_rejected(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    result = read_frames(str(tmp_path / "notes.txt"))
    assert result.skipped == [str(tmp_path / "notes.txt")] and not result.rejected


def test_zip_members_are_indexed_in_parallel(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(_bundled(name), folder / name)
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        for p in folder.iterdir():
            zf.write(p, f"sub/{p.name}")
    result = index([tmp_path / "a.zip"], workers=2, batch_size=1, progress=False)
    assert sorted(f.source.split("!/")[1] for f in result.frames) == [
        "sub/CT_small.dcm",
        "sub/MR_small.dcm",
    ]


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        index([tmp_path / "absent"], progress=False)


def test_one_worker_reads_in_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """`workers=1` (and `--workers 1`) must not start a process pool."""
    import concurrent.futures

    def no_pool(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a process pool was started with workers=1")

    # index() imports the pool class when it needs one (a quiet one-worker run never loads it)
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", no_pool)
    result = index([_bundled("CT_small.dcm"), _bundled("MR_small.dcm")], workers=1, progress=False)
    assert len(result.frames) == 2
