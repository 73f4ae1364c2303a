"""UploadPanel without a hub: what it refuses and how it shows a report (names from the zip are
the uploader's text, so they are escaped).  The upload itself is tested on the real stack, in
Chromium (tests/hub/test_uploads.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.dicom_factory import write_series


def test_a_local_store_is_refused_with_the_reason(tmp_path: Path) -> None:
    import voxelhub
    from voxelhub.errors import VoxelHubError
    from voxelhub.widgets.upload_panel import UploadPanel

    write_series(tmp_path / "s", slices=3, rows=8, columns=8, seed=1)
    voxelhub.ingest(tmp_path / "s", tmp_path / "store", project="p", progress=False)
    with pytest.raises(VoxelHubError, match="through the data service"):
        UploadPanel(voxelhub.open_catalog(tmp_path / "store"))


def test_the_report_table_escapes_names_from_the_zip() -> None:
    from voxelhub.uploads import UploadReport, UploadState
    from voxelhub.widgets.upload_panel import report_table

    report = UploadReport(
        id="u1",
        project="p",
        user="me",
        state=UploadState.DONE,
        volumes=["1.2.3"],
        rejected=[{"file": "<img src=x onerror=alert(1)>.dcm", "reason": "not an image: <b>"}],
    )
    table = report_table(report)
    assert "<img" not in table and "&lt;img src=x onerror=alert(1)&gt;.dcm" in table
    assert "<td>1.2.3</td><td>written</td>" in table
    assert "not an image: &lt;b&gt;" in table
