"""Label images on a 4-D volume (real GE fMRI) are refused with the reason, before any write."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import voxelhub
from voxelhub.errors import GeometryError
from voxelhub.roi.labels import list_labels, write_labels


def test_a_label_image_on_a_4d_volume_is_refused_clearly(shared_dicom: Path, tmp_path: Path):
    report = voxelhub.ingest(
        shared_dicom / "mr_ge_fmri_classic", tmp_path / "store", progress=False
    )
    assert not report.failed, report.summary()
    cat = voxelhub.open_catalog(tmp_path / "store")
    row = cat.series().iloc[0]
    stored = cat.stored_volume(row)
    assert len(stored.timepoints) > 1
    mask = np.zeros(stored.shape[-3:], dtype=bool)
    mask[2:5, 10:20, 10:20] = True
    with pytest.raises(GeometryError, match=r"is 4-D \(\d+ time points\)"):
        write_labels(cat, row, "roi", mask)
    assert list_labels(cat, row) == []
    assert not any((tmp_path / "store" / ".tmp").glob("*")), "nothing half-written"
    cat.close()
