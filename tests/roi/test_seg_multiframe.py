"""A SEG written by highdicom onto a multi-frame (enhanced) source: the real 140-slice Philips CT,
converted to one Legacy Converted Enhanced CT file by highdicom, ingested, then segmented.

highdicom refuses both real enhanced files of ../shared/data/dicom as SEG sources (the Philips
one holds two image types per position, the Siemens one is 4-D), so the multi-frame source is
made from real classic images here.  The SEG's frames reference frames of one instance, so they
are placed by their position along the slice normal, and the import says so.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom

import voxelhub
from voxelhub.roi import imports

SERIES = "ct_philips_ingenuity_phantom"


def test_a_highdicom_seg_on_an_enhanced_multiframe_source(shared_dicom: Path, tmp_path: Path):
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    classic = []
    for path in sorted((shared_dicom / SERIES).rglob("*")):
        if path.is_file():
            try:
                ds = pydicom.dcmread(path)
            except pydicom.errors.InvalidDicomError:
                continue
            if "PixelData" in ds:
                classic.append(ds)
    assert len(classic) == 140
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom on the phantom's names
        enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
            legacy_datasets=classic,
            series_instance_uid=generate_uid(),
            series_number=901,
            sop_instance_uid=generate_uid(),
            instance_number=1,
        )
    enhanced.save_as(tmp_path / "enhanced.dcm")
    report = voxelhub.ingest(tmp_path / "enhanced.dcm", tmp_path / "store", progress=False)
    assert not report.failed, report.summary()
    cat = voxelhub.open_catalog(tmp_path / "store")
    (row,) = [r for _, r in cat.series().iterrows()]
    assert row["slices"] == 140

    source = pydicom.dcmread(tmp_path / "enhanced.dcm")
    frames = int(source.NumberOfFrames)
    mask = np.zeros((frames, int(source.Rows), int(source.Columns)), dtype=np.uint8)
    for f in range(40, 90):  # a box whose size changes with the frame, so order matters
        mask[f, 200 : 220 + f, 150:330] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=[source],
            pixel_array=mask,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[
                hd.seg.SegmentDescription(
                    segment_number=1,
                    segment_label="box",
                    segmented_property_category=codes.SCT.Tissue,
                    segmented_property_type=codes.SCT.Tissue,
                    algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
                )
            ],
            series_instance_uid=generate_uid(),
            series_number=902,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="VoxelHub tests",
            manufacturer_model_name="test_seg_multiframe",
            software_versions="0",
            device_serial_number="1",
        )
    seg.save_as(tmp_path / "seg.dcm")

    (got,) = imports.import_seg(cat, row, tmp_path / "seg.dcm", name="box").values()
    # independently: each source frame's position along the normal, from the enhanced header
    groups = source.PerFrameFunctionalGroupsSequence
    shared = source.SharedFunctionalGroupsSequence[0]
    orientation = (
        (groups[0] if "PlaneOrientationSequence" in groups[0] else shared)
        .PlaneOrientationSequence[0]
        .ImageOrientationPatient
    )
    iop = np.asarray(orientation, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    along = [
        float(np.asarray(g.PlanePositionSequence[0].ImagePositionPatient, float) @ normal)
        for g in groups
    ]
    expected = mask[np.argsort(along)].astype(bool)
    labels = np.asarray(got.labels.values).astype(bool)
    if not np.array_equal(labels, expected):  # the volume may run the other way along the normal
        expected = expected[::-1]
    np.testing.assert_array_equal(labels, expected)
    assert any("position along the slice normal" in note for note in got.notes), got.notes
