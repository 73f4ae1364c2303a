"""Colour (RGB) series written by pydicom: stored with a channel axis ``c``, never refused.

Each test writes a grey series with :func:`write_series`, turns its files into colour images
(same headers, new pixels), ingests, and checks the volume against the pixel arrays pydicom
decodes from the source files, and its geometry against the grey twin's.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import zarr
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

import voxelhub
from tests.dicom_factory import SyntheticSeries, write_series
from voxelhub.dicom.index import read_frames
from voxelhub.store.export import export_nifti

SLICES = 4
ENHANCED_MR_COLOUR = "1.2.840.10008.5.1.4.1.1.4.3"


def _rgb(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def _as_colour(ds: Dataset, pixels: np.ndarray, kind: str = "RGB", planar: int = 0) -> None:
    """Make ``ds`` an 8-bit colour image holding ``pixels`` (rows, columns, 3), as ``kind``."""
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = kind
    ds.PlanarConfiguration = planar
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    for keyword in ("RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = (pixels if planar == 0 else np.moveaxis(pixels, -1, 0)).tobytes()


def _colour_series(
    folder: Path, grey: SyntheticSeries, kind: str = "RGB", planar: int = 0
) -> np.ndarray:
    """Colour copies of ``grey``'s files in ``folder``; returns what pydicom decodes, (c, z, y, x)."""
    folder.mkdir(parents=True, exist_ok=True)
    decoded = []
    for k, path in enumerate(grey.files):
        ds = pydicom.dcmread(path)
        pixels = _rgb(k, (int(ds.Rows), int(ds.Columns)))
        if kind == "YBR_FULL":
            pixels = convert_color_space(pixels, "RGB", "YBR_FULL")
        _as_colour(ds, pixels, kind, planar)
        out = folder / path.name
        ds.save_as(out, enforce_file_format=True)
        decoded.append(pydicom.dcmread(out).pixel_array)  # RGB whatever was stored
    return np.moveaxis(np.stack(decoded), -1, 0)


def _ingest(folder: Path, store: Path) -> tuple[dict, voxelhub.Catalog]:
    report = voxelhub.ingest(folder, store, progress=False, workers=1, deidentify=False)
    assert report.exit_code == 0, report.summary()
    cat = voxelhub.open_catalog(store)
    rows = cat.series()
    assert len(rows) == 1, rows[["split", "channels"]]
    return rows.iloc[0].to_dict(), cat


@pytest.fixture
def grey(tmp_path: Path) -> SyntheticSeries:
    return write_series(tmp_path / "grey", slices=SLICES, modality="MR", shuffle=True, seed=3)


def _check_against(grey: SyntheticSeries, volume: object, tmp_path: Path) -> None:
    """Same geometry (coordinates, affine, spacing) as the grey series with the same headers."""
    grey_row, grey_cat = _ingest(Path(grey.files[0]).parent, tmp_path / "grey-store")
    twin = voxelhub.open_series(grey_row, catalog=grey_cat)
    for axis in ("z", "y", "x"):
        np.testing.assert_array_equal(volume[axis].values, twin[axis].values)  # type: ignore[index]
    for key in ("affine_lps", "direction_lps", "origin_lps", "spacing_zyx", "flags"):
        assert volume.attrs[key] == twin.attrs[key], key  # type: ignore[attr-defined]
    np.testing.assert_allclose(volume.attrs["affine_lps"], grey.affine, atol=1e-4)  # type: ignore[attr-defined]
    grey_cat.close()


@pytest.mark.parametrize(("kind", "planar"), [("RGB", 0), ("RGB", 1), ("YBR_FULL", 0)])
def test_colour_series_becomes_one_volume_with_a_channel_axis(
    tmp_path: Path, grey: SyntheticSeries, kind: str, planar: int
) -> None:
    expected = _colour_series(tmp_path / "colour", grey, kind, planar)
    if kind == "RGB":  # what was written is what comes back, whatever the planar configuration
        np.testing.assert_array_equal(
            expected,
            np.moveaxis(np.stack([_rgb(k, expected.shape[2:]) for k in range(SLICES)]), -1, 0),
        )
    row, cat = _ingest(tmp_path / "colour", tmp_path / "store")
    assert (row["channels"], row["timepoints"], row["slices"]) == (3, 1, SLICES)
    assert row["dtype"] == "|u1"
    volume = voxelhub.open_series(row, catalog=cat)
    assert volume.dims == ("c", "z", "y", "x")
    assert list(volume["c"].values) == ["R", "G", "B"]
    assert volume.attrs["photometric_interpretation"] == kind
    assert volume.chunks is not None and volume.chunks[0] == (3,)  # lazy, channels together
    np.testing.assert_array_equal(volume.values, expected)
    stored = cat.stored_volume(row["volume_uid"])
    assert stored.channels == ("R", "G", "B") and stored.is_colour and not stored.is_4d
    assert stored.levels[0].shape == (SLICES, *expected.shape[2:])  # levels stay spatial
    _check_against(grey, volume, tmp_path)
    cat.close()


def test_ngff_metadata_orders_the_channel_axis_and_validates(
    tmp_path: Path, grey: SyntheticSeries
) -> None:
    _colour_series(tmp_path / "colour", grey)
    row, cat = _ingest(tmp_path / "colour", tmp_path / "store")
    group = zarr.open_group(tmp_path / "store" / row["store_path"], mode="r")
    ome = dict(group.attrs["ome"])
    axes = ome["multiscales"][0]["axes"]
    assert [a["name"] for a in axes] == ["c", "z", "y", "x"]
    assert axes[0] == {"name": "c", "type": "channel"}
    assert [c["label"] for c in ome["omero"]["channels"]] == ["R", "G", "B"]
    for k, dataset in enumerate(ome["multiscales"][0]["datasets"]):
        array = group[dataset["path"]]
        assert array.metadata.dimension_names == ("c", "z", "y", "x")
        assert array.shape[0] == 3 and array.chunks[0] == 3  # never downsampled, one chunk
        assert dataset["coordinateTransformations"][0]["scale"][0] == 1.0
        if k:
            full = np.asarray(group["0"][:], dtype=np.float64)
            assert array.shape[1:] != full.shape[1:]  # in-plane halved, channels kept
    from ome_zarr_models.v05.image import Image

    Image.from_zarr(group)  # the maintained NGFF 0.5 schema accepts it
    cat.close()


def _enhanced_colour_file(
    path: Path, frames: int = 3, rows: int = 12, columns: int = 10
) -> np.ndarray:
    """An Enhanced MR Color Image with ``frames`` slices; returns its pixels (f, rows, cols, 3)."""
    pixels = _rgb(7, (frames, rows, columns))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR_COLOUR
    ds.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_MR_COLOUR, uid
    ds.PatientID, ds.PatientName = "PAT-C", "Colour^Multi"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 5, 1
    ds.ImageType = ["DERIVED", "PRIMARY", "FA"]
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, columns
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [0.8, 0.6]
    measures.SliceThickness = 2.0
    orientation = Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orientation])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    per_frame = []
    for k in reversed(range(frames)):  # frames stored top to bottom: the store sorts them
        item = Dataset()
        position = Dataset()
        position.ImagePositionPatient = [-20.0, -30.0, 10.0 + 2.0 * k]
        content = Dataset()
        content.DimensionIndexValues = [frames - k]
        item.PlanePositionSequence = Sequence([position])
        item.FrameContentSequence = Sequence([content])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    _as_colour(ds, pixels)
    ds.save_as(path, enforce_file_format=True)
    return pixels


def test_enhanced_multiframe_colour_file(tmp_path: Path) -> None:
    (tmp_path / "mf").mkdir()
    pixels = _enhanced_colour_file(tmp_path / "mf" / "fa.dcm")
    np.testing.assert_array_equal(pydicom.dcmread(tmp_path / "mf" / "fa.dcm").pixel_array, pixels)
    row, cat = _ingest(tmp_path / "mf", tmp_path / "store")
    volume = voxelhub.open_series(row, catalog=cat)
    assert volume.dims == ("c", "z", "y", "x") and volume.shape == (3, 3, 12, 10)
    # frames were stored from the top (z = 14) down: the store orders them from z = 10 up
    np.testing.assert_array_equal(volume.values, np.moveaxis(pixels[::-1], -1, 0))
    np.testing.assert_allclose(volume.attrs["spacing_zyx"], [2.0, 0.8, 0.6])
    cat.close()


def test_jpeg_baseline_colour_decodes_like_pydicom(tmp_path: Path, grey: SyntheticSeries) -> None:
    """YBR_FULL_422 in JPEG baseline (what ultrasound and photos use), through pydicom's codec."""
    from PIL import Image

    folder = tmp_path / "jpeg"
    folder.mkdir()
    decoded = []
    for k, path in enumerate(grey.files):
        ds = pydicom.dcmread(path)
        # flat colours: the lossy codec keeps them within a few levels, and a decoder that
        # handed back YCbCr instead of RGB would be off by far more
        pixels = np.empty((int(ds.Rows), int(ds.Columns), 3), dtype=np.uint8)
        pixels[...] = (200 - 10 * k, 30 + 10 * k, 90)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=90, subsampling=1)  # 4:2:2
        _as_colour(ds, pixels, "YBR_FULL_422")
        ds.PixelData = encapsulate([buffer.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.save_as(folder / path.name, enforce_file_format=True)
        decoded.append(pydicom.dcmread(folder / path.name).pixel_array)
    expected = np.moveaxis(np.stack(decoded), -1, 0)
    for k in range(SLICES):
        colour = np.array([200 - 10 * k, 30 + 10 * k, 90])
        assert np.abs(expected[:, k].astype(int) - colour[:, None, None]).max() <= 3
    row, cat = _ingest(folder, tmp_path / "store")
    volume = voxelhub.open_series(row, catalog=cat)
    np.testing.assert_array_equal(volume.values, expected)
    cat.close()


def test_mixed_series_splits_colour_from_grey(tmp_path: Path, grey: SyntheticSeries) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    for k, path in enumerate(grey.files):
        ds = pydicom.dcmread(path)
        if k == SLICES - 1:  # a colour overlay saved into the grey series, past the stack
            ds.ImagePositionPatient = [float(v) + 0.0 for v in ds.ImagePositionPatient]
            _as_colour(ds, _rgb(k, (int(ds.Rows), int(ds.Columns))))
        ds.save_as(folder / path.name, enforce_file_format=True)
    report = voxelhub.ingest(folder, tmp_path / "store", progress=False, workers=1)
    cat = voxelhub.open_catalog(tmp_path / "store")
    rows = cat.series().set_index("split")
    assert sorted(rows.index) == ["colour=False", "colour=True"], report.summary()
    assert rows.loc["colour=True", "channels"] == 3 and rows.loc["colour=True", "slices"] == 1
    assert rows.loc["colour=False", "channels"] == 1
    assert rows.loc["colour=False", "slices"] == SLICES - 1
    grey_volume = voxelhub.open_series(rows.loc["colour=False"].to_dict(), catalog=cat)
    assert grey_volume.dims == ("z", "y", "x")
    np.testing.assert_array_equal(grey_volume.values, grey.volume[: SLICES - 1])
    cat.close()


@pytest.mark.parametrize(
    ("samples", "kind", "named"),
    [
        (1, "PALETTE COLOR", "PALETTE COLOR (palette colour)"),
        (3, "YBR_PARTIAL_420", "YBR_PARTIAL_420"),
        (3, "HSV", "HSV"),
        (4, "ARGB", "4 samples per pixel (ARGB)"),
    ],
)
def test_other_interpretations_are_refused_by_name(
    tmp_path: Path, grey: SyntheticSeries, samples: int, kind: str, named: str
) -> None:
    ds = pydicom.dcmread(grey.files[0])
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = kind
    if samples > 1:
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = bytes(int(ds.Rows) * int(ds.Columns) * samples)
    ds.save_as(tmp_path / "odd.dcm", enforce_file_format=True)
    result = read_frames(str(tmp_path / "odd.dcm"))
    assert not result.frames
    (rejected,) = result.rejected
    assert named in rejected.reason
    assert rejected.tag in ("(0028,0004)", "(0028,0002)")


def test_export_equals_dcm2niix_rgb24(tmp_path: Path, grey: SyntheticSeries) -> None:
    expected = _colour_series(tmp_path / "colour", grey, "RGB", 1)
    row, cat = _ingest(tmp_path / "colour", tmp_path / "store")
    volume = voxelhub.open_series(row, catalog=cat)
    ours_path = tmp_path / "ours.nii.gz"
    export_nifti(volume, ours_path)
    out = tmp_path / "dcm2niix"
    out.mkdir()
    dcm2niix = Path(sys.executable).with_name("dcm2niix")
    subprocess.run(
        [str(dcm2niix), "-z", "y", "-f", "ref", "-o", str(out), str(tmp_path / "colour")],
        check=True,
        capture_output=True,
    )
    ref = nib.load(out / "ref.nii.gz")
    ours = nib.load(ours_path)
    assert ours.header.get_data_dtype() == ref.header.get_data_dtype()  # RGB24
    assert ours.header["datatype"] == ref.header["datatype"] == 128
    ref_rgb = _rgb_array(ref)
    ours_rgb = _rgb_array(ours)
    assert ours_rgb.shape == ref_rgb.shape
    # dcm2niix flips the row axis (its y is minus ours): the same voxels at the same places
    np.testing.assert_allclose(
        ours.affine @ [0, 0, 0, 1], ref.affine @ [0, ref_rgb.shape[1] - 1, 0, 1], atol=1e-3
    )
    np.testing.assert_array_equal(ours_rgb, ref_rgb[:, ::-1])
    np.testing.assert_array_equal(ours_rgb, np.moveaxis(expected, 0, -1).transpose(2, 1, 0, 3))
    assert json.loads(ours_path.with_name("ours.json").read_text())["ConversionSoftware"]
    cat.close()


def _rgb_array(image: nib.Nifti1Image) -> np.ndarray:
    """(x, y, z, 3) uint8 from an RGB24 NIfTI."""
    raw = np.asanyarray(image.dataobj)
    return np.stack([raw["R"], raw["G"], raw["B"]], axis=-1)


def test_radiomics_refuses_a_colour_volume(tmp_path: Path, grey: SyntheticSeries) -> None:
    _colour_series(tmp_path / "colour", grey)
    row, cat = _ingest(tmp_path / "colour", tmp_path / "store")
    volume = voxelhub.open_series(row, catalog=cat)
    mask = np.zeros(volume.shape[1:], dtype=np.uint8)
    mask[1:3, 4:10, 4:10] = 1
    from voxelhub.features import extract

    with pytest.raises(ValueError, match="colour volume"):
        extract(volume, mask)
    cat.close()


def test_thumbnail_is_colour_and_the_slice_viewer_refuses_clearly(
    tmp_path: Path, grey: SyntheticSeries
) -> None:
    from PIL import Image

    from voxelhub.store.thumbnail import thumbnail, thumbnail_png

    expected = _colour_series(tmp_path / "colour", grey)
    row, cat = _ingest(tmp_path / "colour", tmp_path / "store")
    stored = cat.stored_volume(row["volume_uid"])
    middle = thumbnail(stored)  # the smallest level is level 0 here (32 x 40 in-plane)
    assert middle.shape == (*expected.shape[2:], 3)
    np.testing.assert_array_equal(middle, np.moveaxis(expected[:, SLICES // 2], 0, -1))
    png = Image.open(io.BytesIO(thumbnail_png(stored, index=1)))
    assert png.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(png), np.moveaxis(expected[:, 1], 0, -1))
    volume = voxelhub.open_series(row, catalog=cat)
    with pytest.raises(ValueError, match="cannot show colour"):
        voxelhub.view(volume, catalog=cat)
    image = voxelhub.to_simpleitk(volume)  # a vector image: one RGB pixel per voxel
    assert image.GetNumberOfComponentsPerPixel() == 3
    assert image.GetSize() == (expected.shape[3], expected.shape[2], SLICES)
    np.testing.assert_allclose(image.GetOrigin(), volume.attrs["origin_lps"])
    cat.close()
