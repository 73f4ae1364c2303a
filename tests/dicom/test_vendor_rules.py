"""Vendor rules that change which voxels form a volume, each checked on a pydicom-written series.

The README's "Vendor rules" table lists dcm2niix's rules with their source; the ones VoxelHub
implements beyond 4-D grouping (tests/dicom/test_4d_series.py), pepolar and UIH mosaics
(tests/test_real_data_4d.py) are tested here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

import voxelhub
from tests.dicom.test_4d_series import SLICES, _write_4d
from voxelhub.dicom.acquisition import ge_image_kind
from voxelhub.dicom.geometry import compute_geometry
from voxelhub.dicom.index import read_frames
from voxelhub.dicom.mosaic import plan_mosaic
from voxelhub.dicom.series import VolumePlan

GE = "GE MEDICAL SYSTEMS"
MOSAIC = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "dicom"
    / "mr_siemens_transfer_syntaxes"
    / "1.dcm"
)


def _ge_image_type(kind: int, *, creator: bool = True) -> Dataset:
    ds = Dataset()
    ds.Manufacturer = GE
    if creator:
        ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x2F, "SS", kind)
    else:  # an anonymiser dropped the creator: the element stays at its conventional number
        ds.add_new(0x0043102F, "SS", kind)
    return ds


def test_ge_image_kind_reads_the_private_tag_for_ge_only() -> None:
    assert [ge_image_kind(_ge_image_type(k)) for k in range(4)] == [
        "magnitude",
        "phase",
        "real",
        "imaginary",
    ]
    assert ge_image_kind(_ge_image_type(1, creator=False)) == "phase"
    other = _ge_image_type(1)
    other.Manufacturer = "SIEMENS"  # dcm2niix reads (0043,102F) for GE only; so does VoxelHub
    assert ge_image_kind(other) is None
    assert ge_image_kind(_ge_image_type(7)) is None  # not one of GE's four values
    assert ge_image_kind(Dataset()) is None


def test_ge_magnitude_and_phase_in_one_series_become_two_volumes(tmp_path: Path) -> None:
    """Same ImageType, same positions, interleaved instance numbers: only (0043,102F) differs.

    Without the rule the two would be cut by instance order into one 4-D volume of
    "repetitions", magnitude and phase mixed along t.
    """

    def tag(ds: Dataset, v: int, k: int) -> None:
        ds.Manufacturer = GE
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
        ds.InstanceNumber = 2 * k + v + 1  # magnitude and phase of each slice one after another
        ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x2F, "SS", v)

    expected = _write_4d(tmp_path / "in", 2, tag, renumber=False)
    report = voxelhub.ingest(tmp_path / "in", tmp_path / "store", progress=False, workers=1)
    assert report.exit_code == 0, report.summary()
    cat = voxelhub.open_catalog(tmp_path / "store")
    rows = cat.series().sort_values("split")
    assert list(rows["split"]) == ["ge_image_type=magnitude", "ge_image_type=phase"]
    for (_, row), want in zip(rows.iterrows(), expected, strict=True):
        assert row["timepoints"] in (0, 1) and row["slices"] == SLICES
        assert "ge_private_image_type" in row["flags"]
        volume = voxelhub.open_series(row.to_dict(), catalog=cat)
        assert volume.dims == ("z", "y", "x")
        np.testing.assert_array_equal(volume.values, want.astype(volume.dtype))
    cat.close()


def test_a_series_without_the_ge_tag_is_not_split_on_it(tmp_path: Path) -> None:
    """The rule changes nothing where GE did not write the tag (or the vendor is not GE)."""

    def tag(ds: Dataset, v: int, k: int) -> None:
        ds.Manufacturer = "SIEMENS"
        ds.private_block(0x0043, "GEMS_PARM_01", create=True).add_new(0x2F, "SS", v)

    _write_4d(tmp_path / "in", 2, tag)
    report = voxelhub.ingest(tmp_path / "in", tmp_path / "store", progress=False, workers=1)
    assert report.exit_code == 0, report.summary()
    cat = voxelhub.open_catalog(tmp_path / "store")
    rows = cat.series()
    assert len(rows) == 1 and rows.iloc[0]["timepoints"] == 2
    assert "ge_private_image_type" not in rows.iloc[0]["flags"]
    cat.close()


def _mosaic_plan(path: Path) -> VolumePlan:
    result = read_frames(str(path))
    assert not result.rejected and len(result.frames) == 1
    (plan,) = plan_mosaic("study", "series", {}, result.frames)
    return plan


def test_negative_slice_spacing_does_not_mirror_a_mosaic(tmp_path: Path) -> None:
    """The real Siemens mosaic with SpacingBetweenSlices negated lands where the original does.

    Used as a signed step, -3.6 mm laid the 35 tiles out backwards along the CSA slice normal
    (slice order reversed, every slice but the first misplaced) with no flag. The original's
    geometry equals dcm2niix's (tests/dicom/test_mosaic.py).
    """
    ds = pydicom.dcmread(MOSAIC)
    spacing = float(ds.SpacingBetweenSlices)
    ds.SpacingBetweenSlices = -spacing
    variant = tmp_path / "negative.dcm"
    ds.save_as(variant)
    original, negated = _mosaic_plan(MOSAIC), _mosaic_plan(variant)
    assert negated.geometry.order == original.geometry.order == list(range(35))
    np.testing.assert_allclose(negated.geometry.positions, original.geometry.positions, atol=1e-9)
    np.testing.assert_allclose(negated.geometry.affine, original.geometry.affine, atol=1e-9)
    assert "negative_slice_spacing" in negated.geometry.flag_codes()
    assert "negative_slice_spacing" not in original.geometry.flag_codes()


def test_negative_fallback_spacing_of_one_slice_is_a_distance() -> None:
    g = compute_geometry(
        [(0.0, 0.0, 0.0)], (1, 0, 0, 0, 1, 0), (0.5, 0.5), fallback_slice_spacing=-4
    )
    assert g.spacing[0] == 4.0 and np.linalg.det(g.affine[:3, :3]) > 0
