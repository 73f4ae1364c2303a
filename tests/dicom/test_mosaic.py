"""Siemens mosaic: layout from the CSA header, de-mosaicking, geometry — on real data.

The oracle for pixels is the same Siemens Trio EPI mosaic saved in 9 transfer syntaxes (all
lossless, so all must de-mosaic identically); the oracle for geometry is dcm2niix, run on the
file, compared voxel by voxel through both affines.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from voxelhub.dicom.index import Frame, read_frames
from voxelhub.dicom.mosaic import MosaicLayout, demosaic, plan_mosaic, read_layout
from voxelhub.dicom.pixels import decode_frame
from voxelhub.dicom.series import plan_volumes
from voxelhub.errors import DicomError

DICOM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "dicom"
MOSAIC_DIR = DICOM / "mr_siemens_transfer_syntaxes"
MOSAICS = [MOSAIC_DIR / f"{i}.dcm" for i in range(1, 10)]
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _frame(path: Path) -> Frame:
    result = read_frames(str(path))
    assert not result.rejected, result.rejected
    assert len(result.frames) == 1
    return result.frames[0]


def _dcm2niix() -> str:
    venv_bin = Path(sys.executable).parent
    exe = shutil.which("dcm2niix", path=f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}")
    if exe is None:
        pytest.fail("dcm2niix is not installed in the venv (it is a dev dependency)")
    return exe


def _run_dcm2niix(dicom_file: Path, tmp: Path) -> nib.Nifti1Image:
    src, out = tmp / "in", tmp / "out"
    src.mkdir()
    out.mkdir()
    shutil.copy(dicom_file, src / dicom_file.name)
    proc = subprocess.run(
        [_dcm2niix(), "-z", "n", "-b", "n", "-f", "out", "-o", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    img = nib.load(out / "out.nii")
    assert isinstance(img, nib.Nifti1Image)
    return img


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """File 1 (Explicit VR Little Endian), de-mosaicked: the array every syntax must match."""
    frame = _frame(MOSAICS[0])
    return demosaic(decode_frame(frame), read_layout(frame.source))


def test_data_present() -> None:
    missing = [p for p in MOSAICS if not p.is_file()]
    assert not missing, f"real test data missing: {missing}"


def test_read_layout_real_mosaic() -> None:
    layout = read_layout(str(MOSAICS[0]))
    assert layout == MosaicLayout(tile_rows=64, tile_columns=64, tiles_per_row=6, n_slices=35)


@pytest.mark.parametrize("path", MOSAICS, ids=lambda p: p.name)
def test_layout_same_in_every_transfer_syntax(path: Path) -> None:
    frame = _frame(path)
    assert frame.is_mosaic
    assert read_layout(frame.source) == read_layout(str(MOSAICS[0]))


@pytest.mark.parametrize("path", MOSAICS, ids=lambda p: p.name)
def test_demosaic_lossless_across_transfer_syntaxes(path: Path, reference: np.ndarray) -> None:
    frame = _frame(path)
    image = decode_frame(frame)
    assert image.shape == (384, 384)
    volume = demosaic(image, read_layout(frame.source))
    assert volume.shape == (35, 64, 64)
    assert np.array_equal(volume, reference)


def test_demosaic_tile_order_and_padding(reference: np.ndarray) -> None:
    image = decode_frame(_frame(MOSAICS[0]))
    # slice k is tile k, row-major: tile 7 is tile row 1, tile column 1
    assert np.array_equal(reference[7], image[64:128, 64:128])
    assert np.array_equal(reference[34], image[320:384, 256:320])
    # the 36th tile is padding and is dropped
    assert reference.shape[0] == 35
    assert not np.array_equal(reference[0], reference[1])


def test_demosaic_rejects_wrong_shape() -> None:
    layout = MosaicLayout(64, 64, 6, 35)
    with pytest.raises(ValueError, match="6×6 grid"):
        demosaic(np.zeros((384, 320), dtype=np.uint16), layout)


def test_first_slice_position_matches_nibabel() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        from nibabel.nicom import dicomwrappers

    frame = _frame(MOSAICS[0])
    plan = plan_mosaic("study", "series", {}, [frame])[0]
    wrapper = dicomwrappers.wrapper_from_data(pydicom.dcmread(MOSAICS[0]))
    assert wrapper.is_mosaic
    g = plan.geometry
    assert g.order == list(range(35))
    np.testing.assert_allclose(g.positions[0], wrapper.image_position, atol=1e-6)
    np.testing.assert_allclose(g.spacing, wrapper.voxel_sizes[::-1], atol=1e-6)
    np.testing.assert_allclose(g.direction[:, 2], wrapper.slice_normal, atol=1e-6)
    assert g.flags == []


def _header_variant(tmp_path: Path, variant: str) -> Path:
    """The real mosaic, or a copy whose row cosine is negated (pixels untouched).

    Negating the row cosine flips row × column against the CSA SliceNormalVector, so the tiles
    advance *against* the normal that compute_geometry sorts along: the slice order reverses,
    as in real sagittal Siemens mosaics.
    """
    if variant == "original":
        return MOSAICS[0]
    ds = pydicom.dcmread(MOSAICS[0])
    iop = [float(v) for v in ds.ImageOrientationPatient]
    ds.ImageOrientationPatient = [-iop[0], -iop[1], -iop[2], *iop[3:]]
    out = tmp_path / "variant" / "1.dcm"
    out.parent.mkdir()
    ds.save_as(out)
    return out


@pytest.mark.parametrize("variant", ["original", "row_cosine_negated"])
def test_geometry_and_voxels_match_dcm2niix(tmp_path: Path, variant: str) -> None:
    path = _header_variant(tmp_path, variant)
    frame = _frame(path)
    (plan,) = plan_mosaic("study", "series", {}, [frame])
    g = plan.geometry
    assert plan.mosaic == MosaicLayout(64, 64, 6, 35)
    expected_order = list(range(35)) if variant == "original" else list(range(34, -1, -1))
    assert g.order == expected_order
    # the writer's contract: z index k holds tile geometry.order[k]
    ours_zyx = demosaic(decode_frame(frame), plan.mosaic)[g.order]
    ours_xyz = ours_zyx.transpose(2, 1, 0)

    img = _run_dcm2niix(path, tmp_path)
    theirs = np.asanyarray(img.dataobj)
    assert theirs.shape == (64, 64, 35)
    slope, inter = img.dataobj.slope, img.dataobj.inter
    assert slope in (1.0, None) or np.isnan(slope)
    assert inter in (0.0, None) or np.isnan(inter)

    # Match voxels by value alone (no geometry used): the one axis flip/transposition of our
    # (x, y, z) array that reproduces dcm2niix's (i, j, k) array.  Apply the same transform to
    # our index grids to learn, for every NIfTI voxel, which of our voxels it is.
    grids = np.meshgrid(*(np.arange(n) for n in ours_xyz.shape), indexing="ij")
    matches = []
    for axes in ((0, 1, 2), (1, 0, 2)):
        for flips in np.ndindex(2, 2, 2):

            def transform(a: np.ndarray, axes: tuple[int, ...] = axes, flips=flips) -> np.ndarray:
                a = a.transpose(axes)
                for ax, f in enumerate(flips):
                    if f:
                        a = np.flip(a, ax)
                return a

            if transform(ours_xyz).shape == theirs.shape and np.array_equal(
                transform(ours_xyz), theirs
            ):
                matches.append(transform)
    assert len(matches) == 1, f"{len(matches)} axis mappings reproduce dcm2niix's voxels"
    transform = matches[0]
    xyz = np.stack([transform(a).ravel() for a in grids])  # our index of each NIfTI voxel
    ijk = np.stack([a.ravel() for a in np.indices(theirs.shape)])

    # Same voxel value ⇒ same place: compare world positions of matched voxels (centres).
    ones = np.ones((1, ijk.shape[1]))
    ras = (img.affine @ np.vstack([ijk, ones]))[:3]
    lps_theirs = LPS_TO_RAS @ ras
    lps_ours = (g.affine @ np.vstack([xyz, ones]))[:3]
    assert np.abs(lps_theirs - lps_ours).max() < 1e-3
    # (every voxel centre, the 8 corner voxels included: two affines that agree on a full 3-D
    # grid of points agree everywhere, so voxel corners/edges coincide too)


def test_plan_volumes_makes_one_mosaic_volume_per_file() -> None:
    frames = [_frame(p) for p in MOSAICS]
    plan = plan_volumes(frames)
    assert not plan.rejected
    assert len(plan.volumes) == 9  # same SeriesInstanceUID, one SeriesNumber per file
    for vol in plan.volumes:
        assert vol.mosaic == MosaicLayout(64, 64, 6, 35)
        assert len(vol.frames) == 1
        assert vol.geometry.order == list(range(35))
    assert len({v.volume_uid for v in plan.volumes}) == 9


def test_several_mosaic_frames_on_one_grid_make_one_4d_volume() -> None:
    frames = [_frame(MOSAICS[1]), _frame(MOSAICS[0])]
    (plan,) = plan_mosaic("study", "series", {"series_number": 1}, frames)
    assert plan.is_4d and plan.n_timepoints == 2
    assert plan.split == {"series_number": 1}
    # t follows acquisition order (AcquisitionNumber, then InstanceNumber, then file)
    assert [f.source for f in plan.frames] == sorted(f.source for f in frames)
    assert [tp.index for tp in plan.timepoints] == [0, 1]
    single = plan_mosaic("study", "series", {"series_number": 1}, frames[:1])
    assert single[0].split == {"series_number": 1} and not single[0].is_4d


def test_mosaic_frames_on_different_grids_stay_separate_volumes() -> None:
    moved = dataclasses.replace(
        _frame(MOSAICS[0]),
        image_position=tuple(v + 5.0 for v in _frame(MOSAICS[0]).image_position),
        sop_instance_uid="moved",
    )
    plans = plan_mosaic("study", "series", {"series_number": 1}, [_frame(MOSAICS[1]), moved])
    assert len(plans) == 2 and not any(p.is_4d for p in plans)
    assert len({p.split["acquisition"] for p in plans}) == 2


@pytest.mark.parametrize(
    ("relative", "reason"),
    [
        ("ct_ge_hispeed_gantry_tilt/01.dcm", "no Siemens CSA image header"),
        ("mr_siemens_fieldmap_2echo/e1_01.dcm", "NumberOfImagesInMosaic"),
    ],
)
def test_read_layout_non_mosaic_raises(relative: str, reason: str) -> None:
    path = str(DICOM / relative)
    with pytest.raises(DicomError, match=reason) as info:
        read_layout(path)
    assert info.value.tag == "(0029,1010)"
    assert info.value.path == path
    assert "(0029,1010)" in str(info.value)
