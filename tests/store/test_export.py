"""NIfTI + sidecar + FSL bval/bvec export, checked by reloading and against dcm2niix's output."""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from pathlib import Path

import dask
import dask.array as da
import nibabel as nib
import numpy as np
import pydicom
import pytest
import xarray as xr

from voxelhub.errors import GeometryError
from voxelhub.store.export import Exported, export_nifti, fsl_bvecs
from voxelhub.store.volume import nifti_affine

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _affine_lps(rotation: np.ndarray, spacing_xyz, origin) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.asarray(spacing_xyz, dtype=float)
    affine[:3, 3] = origin
    return affine


def _unit_rows(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _gradients(g: np.ndarray, axes: str = "LPS") -> dict[str, tuple[str, np.ndarray]]:
    """Per-volume directions as the store keeps them: one ``t`` coordinate per component."""
    return {f"gradient_{letter}": ("t", g[:, i]) for i, letter in enumerate(axes)}


def _dwi(affine_lps: np.ndarray, **coords) -> xr.DataArray:
    """A small 4-D volume: t=4, x=5, y=6, z=7 (array order t, z, y, x), distinct int16 values."""
    data = np.arange(4 * 7 * 6 * 5, dtype=np.int16).reshape(4, 7, 6, 5) - 300
    return xr.DataArray(
        data,
        dims=("t", "z", "y", "x"),
        coords=coords,
        attrs={
            "affine_lps": affine_lps.tolist(),
            "flags": [],
            "repetition_time": 2.5,
            "acquisition": {
                "Manufacturer": "Synthetic",
                "EchoTime": 0.08,
                "FlipAngle": 90,
                "SliceTiming": [0.0, 0.5, 1.0, 1.5, 0.25, 0.75, 1.25],
            },
        },
        name="dwi",
    )


def _fsl_to_lps(bvec: np.ndarray, affine_ras: np.ndarray) -> np.ndarray:
    """FSL bvecs (3, N) of an image with ``affine_ras`` → unit directions (N, 3) in DICOM LPS."""
    v = np.array(bvec, dtype=float).T
    if np.linalg.det(affine_ras[:3, :3]) > 0:  # undo FSL's x flip for "neurological" storage
        v[:, 0] = -v[:, 0]
    direction = affine_ras[:3, :3] / np.linalg.norm(affine_ras[:3, :3], axis=0)
    return (LPS_TO_RAS @ direction @ v.T).T  # RAS -> LPS is the same diagonal matrix


@pytest.mark.parametrize("flip_y", [False, True], ids=["det>0", "det<0"])
def test_4d_diffusion_round_trip(tmp_path: Path, flip_y: bool) -> None:
    rotation = _rotation(3)
    if flip_y:  # a y axis running the other way: the NIfTI determinant turns negative
        rotation[:, 1] = -rotation[:, 1]
    affine = _affine_lps(rotation, (1.5, 2.0, 3.0), (-40.0, 25.0, 12.5))
    b = np.array([0.0, 1000.0, 928.2885599370205, 3000.0])
    g = np.vstack([[np.nan, np.nan, np.nan], _unit_rows(3, 11)])
    volume = _dwi(
        affine, b_value=("t", b), phase_encoding_direction=("t", ["j-"] * 4), **_gradients(g)
    )

    out = export_nifti(volume, tmp_path / "dwi.nii.gz")

    assert out == Exported(
        image=tmp_path / "dwi.nii.gz",
        sidecar=tmp_path / "dwi.json",
        bval=tmp_path / "dwi.bval",
        bvec=tmp_path / "dwi.bvec",
    )
    image = nib.load(out.image)
    assert image.shape == (5, 6, 7, 4)
    expected_affine = nifti_affine(volume)
    assert (np.linalg.det(expected_affine[:3, :3]) < 0) == flip_y
    sform, sform_code = image.header.get_sform(coded=True)
    qform, qform_code = image.header.get_qform(coded=True)
    assert (int(sform_code), int(qform_code)) == (1, 1)
    np.testing.assert_allclose(sform, expected_affine, atol=1e-4)  # stored as float32
    np.testing.assert_allclose(qform, expected_affine, atol=1e-4)
    data = np.asarray(image.dataobj)
    assert data.dtype == np.int16
    np.testing.assert_array_equal(data, volume.values.transpose(3, 2, 1, 0))
    np.testing.assert_allclose(image.header.get_zooms(), (1.5, 2.0, 3.0, 2.5), rtol=1e-6)
    assert image.header.get_xyzt_units() == ("mm", "sec")

    assert out.bval.read_text() == "0 1000 928.289 3000\n"
    lines = out.bvec.read_text().splitlines()
    assert len(lines) == 3
    bvec = np.array([[float(v) for v in line.split(" ")] for line in lines])
    assert bvec.shape == (3, 4)
    assert [line.split(" ")[0] for line in lines] == ["0", "0", "0"]  # b=0 volume
    np.testing.assert_allclose(np.linalg.norm(bvec[:, 1:], axis=0), 1.0, atol=2e-6)
    np.testing.assert_allclose(_fsl_to_lps(bvec, image.affine)[1:], g[1:], atol=1e-6)

    sidecar = json.loads(out.sidecar.read_text())
    assert sidecar["ConversionSoftware"] == "voxelhub"
    assert sidecar["ConversionSoftwareVersion"]
    assert sidecar["PhaseEncodingDirection"] == "j-"
    assert sidecar["RepetitionTime"] == 2.5
    assert sidecar["EchoTime"] == 0.08
    assert sidecar["SliceTiming"] == [0.0, 0.5, 1.0, 1.5, 0.25, 0.75, 1.25]
    assert "VoxelHubNote" not in sidecar
    assert not list(tmp_path.glob(".*"))  # no temporary left behind

    # directions kept only in the volume's index axes give the same file
    direction = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    in_index_axes = np.linalg.solve(direction, g.T).T
    volume = _dwi(affine, b_value=("t", b), **_gradients(in_index_axes, "xyz"))
    again = export_nifti(volume, tmp_path / "index_axes.nii.gz")
    assert again.bvec is not None
    assert again.bvec.read_text() == out.bvec.read_text()


def test_mixed_phase_encoding_and_plain_nii(tmp_path: Path) -> None:
    affine = _affine_lps(_rotation(5), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    volume = _dwi(affine, phase_encoding_direction=("t", ["j", "j-", "j", "j-"]))
    volume.attrs["acquisition"]["PhaseEncodingDirection"] = "j"

    out = export_nifti(volume, str(tmp_path / "pepolar.nii"))

    assert out.image.name == "pepolar.nii" and out.bval is None and out.bvec is None
    assert nib.load(out.image).shape == (5, 6, 7, 4)
    sidecar = json.loads(out.sidecar.read_text())
    assert "PhaseEncodingDirection" not in sidecar
    assert "0:j, 1:j-, 2:j, 3:j-" in sidecar["VoxelHubNote"]

    one = export_nifti(volume.isel(t=1), tmp_path / "reversed.nii.gz")  # a single volume
    assert nib.load(one.image).shape == (5, 6, 7)
    sidecar = json.loads(one.sidecar.read_text())
    assert sidecar["PhaseEncodingDirection"] == "j-"
    assert "VoxelHubNote" not in sidecar


def test_sheared_affine_keeps_exact_sform_and_no_qform(tmp_path: Path) -> None:
    affine = _affine_lps(np.eye(3), (0.5, 0.5, 1.25), (-100.0, -120.0, 30.0))
    affine[1, 2] = 0.4  # gantry tilt: slices step along y as they go along z
    volume = _dwi(affine)
    volume.attrs["flags"] = ["gantry_tilt"]

    out = export_nifti(volume, tmp_path / "tilt.nii.gz")

    header = nib.load(out.image).header
    sform, sform_code = header.get_sform(coded=True)
    assert int(sform_code) == 1
    assert int(header["qform_code"]) == 0
    np.testing.assert_allclose(sform, nifti_affine(volume), atol=1e-5)


# --------------------------------------------------------------------------------------------
# the convention against dcm2niix on real data


def _uih_series(folder: Path) -> tuple[xr.DataArray, np.ndarray, np.ndarray]:
    """The UIH mosaic DTI as the store would hold it, its b-values and raw (0065,1037) vectors."""
    headers = sorted(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")),
        key=lambda d: int(d.InstanceNumber),
    )
    assert len(headers) == 17
    b = np.array([float(d[0x0065, 0x1009].value) for d in headers])  # FD, s/mm^2
    g = np.array([[float(v) for v in d[0x0065, 0x1037].value] for d in headers])  # FD x3
    first = headers[0]
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row_cos, col_cos = iop[:3], iop[3:]
    items = first[0x0065, 0x1051].value  # one item per slice of the mosaic, in slice order
    n_slices = len(items)
    tiles_x = math.ceil(math.sqrt(n_slices))  # UIH "VFRAME": ceil(sqrt(n)) tiles per row
    tiles_y = math.ceil(n_slices / tiles_x)
    rows, columns = int(first.Rows) // tiles_y, int(first.Columns) // tiles_x
    assert (n_slices, rows, columns) == (20, 64, 64)
    p_first = np.array([float(v) for v in items[0].ImagePositionPatient])
    p_last = np.array([float(v) for v in items[-1].ImagePositionPatient])
    dy, dx = (float(v) for v in first.PixelSpacing)  # (row spacing, column spacing) = 3.5
    affine = np.eye(4)
    affine[:3, 0] = row_cos * dx  # x: column index, along the row direction cosine
    affine[:3, 1] = col_cos * dy  # y: row index, along the column direction cosine
    affine[:3, 2] = (p_last - p_first) / (n_slices - 1)  # z: slice index (4.2 mm step)
    affine[:3, 3] = p_first

    # dcm2niix reads UIH's (0065,1037) as components along (row, column, slice normal) -- its
    # UIH branch of siemensPhilipsCorrectBvecs only negates the second one for its row flip --
    # so the LPS direction the store must hold to reproduce Ref is that frame applied to it.
    frame = np.column_stack([row_cos, col_cos, np.cross(row_cos, col_cos)])
    gradient_lps = (frame @ g.T).T
    volume = xr.DataArray(
        np.zeros((17, n_slices, rows, columns), dtype=np.int16),
        dims=("t", "z", "y", "x"),
        coords={"b_value": ("t", b), **_gradients(gradient_lps)},
        attrs={
            "affine_lps": affine.tolist(),
            "flags": [],
            "repetition_time": float(first.RepetitionTime) / 1000.0,
            "acquisition": {"Manufacturer": "UIH", "PhaseEncodingDirection": "j"},
        },
        name="dti_tra_dir16_AP",
    )
    return volume, b, g


def test_bvec_convention_matches_dcm2niix_on_uih_dti(tmp_path: Path, shared_dicom: Path) -> None:
    folder = shared_dicom / "mr_uih_dti_mosaic"
    ref_bval = next((folder / "Ref").glob("*.bval"))
    ref_bvec = np.loadtxt(next((folder / "Ref").glob("*.bvec")))
    ref_affine = nib.load(next((folder / "Ref").glob("*.nii"))).affine
    volume, _, raw = _uih_series(folder)

    out = export_nifti(volume, tmp_path / "dti.nii.gz")

    assert out.bval is not None and out.bvec is not None
    assert out.bval.read_text() == ref_bval.read_text()  # "1.25194 928.289 ... 928.289\n"
    ours = np.loadtxt(out.bvec)
    ours_affine = nib.load(out.image).affine
    assert np.linalg.det(ours_affine[:3, :3]) > 0 > np.linalg.det(ref_affine[:3, :3])

    # dcm2niix flips the row axis of its NIfTI: its y column is minus ours (x and z agree).
    np.testing.assert_allclose(ref_affine[:3, 0], ours_affine[:3, 0], atol=1e-3)
    np.testing.assert_allclose(ref_affine[:3, 1], -ours_affine[:3, 1], atol=1e-3)
    np.testing.assert_allclose(ref_affine[:3, 2], ours_affine[:3, 2], atol=1e-3)
    # The same flip applied to our vectors negates y; it also turns the determinant negative,
    # so FSL's "negate x when det > 0" rule, which applies to our file and not to dcm2niix's,
    # drops out: in dcm2niix's axes our vectors are (-x, -y, z).
    np.testing.assert_allclose(ours * np.array([[-1.0], [-1.0], [1.0]]), ref_bvec, atol=1e-3)
    # Convention-free check: both files, each read back through its own affine with FSL's rule,
    # give the same directions in patient space.
    np.testing.assert_allclose(
        _fsl_to_lps(ours, ours_affine), _fsl_to_lps(ref_bvec, ref_affine), atol=1e-3
    )
    # Only y negated (no determinant rule) would not match: x would have the wrong sign.
    assert np.abs(ours * np.array([[1.0], [-1.0], [1.0]]) - ref_bvec).max() > 0.5

    # Is (0065,1037) already LPS?  Not as dcm2niix reads it: taken as LPS, the directions
    # differ from Ref by the slice obliquity (about 2 degrees here; up to 0.04 per component).
    as_lps = fsl_bvecs(raw, volume.coords["b_value"].values, ours_affine).T
    assert np.abs(as_lps * np.array([[-1.0], [-1.0], [1.0]]) - ref_bvec).max() > 0.01


# --------------------------------------------------------------------------------------------
# atomicity


def _boom() -> np.ndarray:
    raise RuntimeError("chunk lost while reading")


def _failing_volume(affine: np.ndarray) -> xr.DataArray:
    """A volume whose data cannot be read (a dask task that fails, like a lost store chunk)."""
    data = da.from_delayed(dask.delayed(_boom)(), shape=(4, 7, 6, 5), dtype=np.int16)
    volume = _dwi(affine, b_value=("t", [0.0, 1000.0, 1000.0, 1000.0]))
    return volume.copy(data=data)


def test_failed_export_leaves_nothing_and_keeps_the_previous_files(tmp_path: Path) -> None:
    affine = _affine_lps(_rotation(8), (2.0, 2.0, 2.0), (1.0, 2.0, 3.0))
    with pytest.raises(RuntimeError, match="chunk lost"):
        export_nifti(_failing_volume(affine), tmp_path / "a.nii.gz")
    assert list(tmp_path.iterdir()) == []

    good = _dwi(
        affine, b_value=("t", [0.0, 1000.0, 1000.0, 1000.0]), **_gradients(_unit_rows(4, 2))
    )
    first = export_nifti(good, tmp_path / "a.nii.gz")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"a.nii.gz", "a.json", "a.bval", "a.bvec"}
    with pytest.raises(RuntimeError, match="chunk lost"):
        export_nifti(_failing_volume(affine), first.image)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_failing_location_leaves_no_final_files(tmp_path: Path) -> None:
    affine = _affine_lps(_rotation(9), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    volume = _dwi(
        affine, b_value=("t", [0.0, 1000.0, 1000.0, 1000.0]), **_gradients(_unit_rows(4, 4))
    )
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    with pytest.raises(OSError):
        export_nifti(volume, not_a_folder / "out.nii.gz")

    # The sidecar's final name is taken by a folder: the rename fails after every temporary
    # file was complete; the image (renamed last) must not appear and no temporary may remain.
    (tmp_path / "out.json").mkdir()
    (tmp_path / "out.json" / "keep").write_text("x")
    with pytest.raises(OSError):
        export_nifti(volume, tmp_path / "out.nii.gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "out.json"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores modes")
def test_read_only_folder_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            export_nifti(_dwi(np.eye(4)), folder / "out.nii.gz")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


# --------------------------------------------------------------------------------------------
# 3-D, refusals


def test_3d_volume_writes_image_and_sidecar_only(tmp_path: Path) -> None:
    affine = _affine_lps(_rotation(4), (0.8, 0.8, 1.0), (-90.0, -100.0, -50.0))
    data = np.random.default_rng(0).normal(size=(7, 6, 5)).astype(np.float32)
    volume = xr.DataArray(
        data,
        dims=("z", "y", "x"),
        attrs={"affine_lps": affine.tolist(), "flags": [], "acquisition": {"EchoTime": 0.003}},
        name="t1",
    )
    # a stale diffusion export under the same name must not survive next to a new image
    (tmp_path / "t1.bval").write_text("0 1000\n")
    (tmp_path / "t1.bvec").write_text("0 1\n0 0\n0 0\n")

    out = export_nifti(volume, tmp_path / "t1.nii.gz")

    assert out.bval is None and out.bvec is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t1.json", "t1.nii.gz"]
    image = nib.load(out.image)
    assert image.shape == (5, 6, 7)
    np.testing.assert_array_equal(np.asarray(image.dataobj), data.transpose(2, 1, 0))
    np.testing.assert_allclose(image.affine, nifti_affine(volume), atol=1e-4)
    assert image.header.get_xyzt_units() == ("mm", "sec")
    sidecar = json.loads(out.sidecar.read_text())
    assert sidecar == {
        "EchoTime": 0.003,
        "ConversionSoftware": "voxelhub",
        "ConversionSoftwareVersion": sidecar["ConversionSoftwareVersion"],
    }


def test_refuses_what_nifti_cannot_hold(tmp_path: Path) -> None:
    volume = _dwi(np.eye(4))
    volume.attrs["flags"] = ["non_uniform_spacing"]
    with pytest.raises(GeometryError, match="non_uniform_spacing"):
        export_nifti(volume, tmp_path / "x.nii.gz")
    del volume.attrs["affine_lps"]
    with pytest.raises(GeometryError, match="affine_lps"):
        export_nifti(volume, tmp_path / "x.nii.gz")
    with pytest.raises(ValueError, match=r"\.nii or \.nii\.gz"):
        export_nifti(_dwi(np.eye(4)), tmp_path / "x.mgz")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# private files, in the user's own folder


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


@pytest.fixture
def loose_umask():
    """The umask most accounts have (022): files would be world-readable unless made private."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_exported_files_are_not_readable_by_others(tmp_path: Path, loose_umask) -> None:
    affine = _affine_lps(_rotation(3), (2.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    volume = _dwi(
        affine, b_value=("t", [0.0, 1000.0, 1000.0, 1000.0]), **_gradients(_unit_rows(4, 1))
    )
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o755)
    (mine / "a.json").write_text("{}")  # an older export, world-readable
    (mine / "a.json").chmod(0o644)
    out = export_nifti(volume, mine / "a.nii.gz")
    assert _modes(mine) == dict.fromkeys(["a.nii.gz", "a.json", "a.bval", "a.bvec"], 0o600)
    np.testing.assert_array_equal(
        np.asarray(nib.load(out.image).dataobj), volume.transpose("x", "y", "z", "t").values
    )

    # a setgid folder is shared with its group (a project folder): group may read, others not
    shared = tmp_path / "project"
    shared.mkdir()
    shared.chmod(0o2770)
    if not shared.stat().st_mode & stat.S_ISGID:
        pytest.skip("this file system drops the setgid bit")
    export_nifti(volume, shared / "b.nii")
    assert _modes(shared) == dict.fromkeys(["b.nii", "b.json", "b.bval", "b.bvec"], 0o640)


def test_umask_can_only_take_more_away(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        shared = tmp_path / "project"
        shared.mkdir()
        shared.chmod(0o2770)
        export_nifti(_dwi(np.eye(4)), shared / "c.nii.gz")
    finally:
        os.umask(old)
    assert set(_modes(shared).values()) == {0o600}


def test_cli_export_writes_into_the_users_folder_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loose_umask
) -> None:
    from tests.dicom_factory import write_series
    from voxelhub import config, ingest
    from voxelhub.cli import build_parser, main

    write_series(tmp_path / "in", slices=4, seed=3)
    report = ingest(tmp_path / "in", tmp_path / "store", progress=False, workers=1)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(config.EXPORT_ENV, raising=False)
    uid = report.written[0]

    assert main(["export", uid, "--store", str(tmp_path / "store")]) == 0
    folder = home / "voxelhub-exports"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert _modes(folder) == {f"{uid}.nii.gz": 0o600, f"{uid}.json": 0o600}

    # a folder given: the file goes in it under the volume's UID
    target = tmp_path / "out"
    target.mkdir()
    assert main(["export", uid, str(target), "--store", str(tmp_path / "store")]) == 0
    assert sorted(_modes(target)) == [f"{uid}.json", f"{uid}.nii.gz"]

    args = build_parser().parse_args(["export", uid, "--store", "s"])
    assert args.output is None
    monkeypatch.setenv("HOME", os.path.expanduser("~root") if os.geteuid() == 0 else str(home))
    assert not config.export_dir().is_relative_to(tempfile.gettempdir())
    assert not config.export_dir().is_relative_to("/tmp")


def test_no_default_output_in_a_shared_temporary_folder() -> None:
    """No writer of user outputs points at /tmp (or the system's temporary folder).  A line
    that names it for another reason says so with a ``# not-an-output: why`` comment."""
    import voxelhub

    package = Path(voxelhub.__file__).parent
    offenders = [
        f"{path.relative_to(package)}:{n}"
        for path in package.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if ("/tmp" in line.split("#")[0] or "gettempdir" in line or "mkstemp" in line)
        and "# not-an-output: " not in line
    ]
    assert offenders == []
