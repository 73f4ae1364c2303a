"""Encryption at rest on the write path: a stolen store reveals nothing of the real series.

A real CT series from ../shared/data/dicom is ingested into an encrypted, de-identified project;
then every byte the store and its catalog leave on disk is searched for what the scanner wrote
(voxels, UIDs, names, dates).  The same search on a clear ingest finds them, so it can fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import zarr

from voxelhub import ingest, open_catalog
from voxelhub.catalog import EncryptionSettingError
from voxelhub.store.encryption import CorruptChunk, keys_in_use, use_keys
from voxelhub.store.keys import MissingKey

SERIES = "ct_ge_hispeed_gantry_tilt"
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "FrameOfReferenceUID",
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstitutionName",
    "StudyDescription",
    "SeriesDescription",
    "AccessionNumber",
)


pytestmark = pytest.mark.usefixtures("no_keys_left")  # conftest: also key_file


def source_secrets(folder: Path) -> set[bytes]:
    """Every identifying value the scanner wrote (long enough not to occur by chance)."""
    found: set[bytes] = set()
    for path in sorted(folder.glob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in PHI_KEYWORDS:
            value = str(ds.get(keyword, "") or "").strip()
            if len(value) >= 8:
                found.add(value.encode())
    assert len(found) >= 20, found
    return found


def voxel_runs(array: np.ndarray, width: int = 64) -> list[bytes]:
    """64-byte runs of the volume's voxels, as stored (little-endian), none of them constant."""
    raw = np.ascontiguousarray(array).tobytes()
    runs = [raw[i : i + width] for i in range(0, len(raw) - width, 8191)]
    return [r for r in runs if len(set(r)) > 8]


def disk_bytes(root: Path, *, skip: str = "") -> dict[Path, bytes]:
    return {
        p: p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not (skip and p.name.startswith(skip))
    }


def found_in(needles: Iterator[bytes] | list[bytes] | set[bytes], files: dict[Path, bytes]):
    return sorted(
        {(n[:40], p.name) for n in needles for p, blob in files.items() if n in blob},
        key=str,
    )


def clear_chunk_runs(store: Path) -> list[bytes]:
    """64-byte runs of the clear ingest's compressed shards (what a thief would grep for)."""
    runs = []
    for p, blob in disk_bytes(store).items():
        if "c" in p.parts and p.name != "zarr.json":
            runs += [blob[i : i + 64] for i in range(0, len(blob) - 64, 65521)]
    return [r for r in runs if len(set(r)) > 8]


def test_an_encrypted_project_leaves_nothing_of_the_series_on_disk(
    tmp_path: Path, shared_dicom: Path, key_file: Path
) -> None:
    source = shared_dicom / SERIES
    secrets = source_secrets(source)

    clear = tmp_path / "clear"
    report = ingest(source, clear, project="plain", progress=False, workers=1)
    assert report.written and not report.failed
    cat = open_catalog(clear)
    uid = cat.series().volume_uid.iloc[0]
    expected = np.asarray(cat.open_series(uid))
    cat.close()
    runs = voxel_runs(expected)
    chunks = clear_chunk_runs(clear)
    # the search works: a clear identifiable store shows the header values and its shards
    assert found_in(secrets, disk_bytes(clear, skip="catalog"))
    assert found_in(chunks, disk_bytes(clear))

    sealed = tmp_path / "sealed"
    report = ingest(
        source,
        sealed,
        project="sealed",
        deidentify=True,
        encrypt=True,
        key_file=key_file,
        progress=False,
        workers=1,
    )
    assert report.written and not report.failed, report.summary()
    files = disk_bytes(sealed)
    assert any(p.name == "catalog.sqlite" for p in files)
    assert found_in(secrets, files) == []
    assert found_in(runs, files) == []
    assert found_in(chunks, files) == []
    # zarr.json keeps the grid only; the header went into the sealed object
    cat = open_catalog(sealed)
    row = cat.series().iloc[0]
    assert bool(cat.projects().set_index("name").encrypted["sealed"])
    group = zarr.open_group(str(sealed / row.store_path), mode="r")
    meta = dict(group.attrs["voxelhub"])
    assert "dicom" not in meta and "series_uid" not in meta and "acquisition" not in meta
    assert meta["encryption"]["key_id"]
    assert group.attrs["ome"]["multiscales"][0]["name"] == row.volume_uid

    # with the key, the reads are the clear project's, attributes and all
    stored = cat.stored_volume(row.volume_uid)
    assert stored.encrypted and stored.source_instance_uids and stored.acquisition
    volume = cat.open_series(row.volume_uid)
    assert np.array_equal(np.asarray(volume), expected)
    assert volume.attrs["checksum"] == stored.checksum
    assert volume.attrs["acquisition"] == stored.acquisition

    # without it, a loud error naming the data key
    key_id = meta["encryption"]["key_id"]
    use_keys(None)
    with pytest.raises(MissingKey, match=key_id):
        cat.stored_volume(row.volume_uid)
    with pytest.raises(MissingKey, match=key_id):
        np.asarray(group["0"][0])
    cat.close()


def test_a_flipped_bit_and_a_changed_sidecar_are_errors_not_data(
    tmp_path: Path, shared_dicom: Path, key_file: Path
) -> None:
    store = tmp_path / "store"
    ingest(
        shared_dicom / SERIES,
        store,
        project="p",
        encrypt=True,
        key_file=key_file,
        progress=False,
        workers=1,
    )
    cat = open_catalog(store)
    row = cat.series().iloc[0]
    shard = next(
        p
        for p in sorted((store / row.store_path / "0").rglob("*"))
        if p.is_file() and "c" in p.parts
    )
    raw = bytearray(shard.read_bytes())
    raw[200] ^= 0x04
    shard.write_bytes(bytes(raw))
    with pytest.raises(CorruptChunk, match="failed authentication"):
        np.asarray(cat.open_series(row.volume_uid))
    sidecar = store / row.store_path / "voxelhub-attributes.sealed"
    blob = bytearray(sidecar.read_bytes())
    blob[-3] ^= 0x01
    sidecar.write_bytes(bytes(blob))
    with pytest.raises(CorruptChunk, match="attributes"):
        cat.stored_volume(row.volume_uid)
    cat.close()


def test_encryption_never_mixes_with_clear_data(
    tmp_path: Path, shared_dicom: Path, key_file: Path
) -> None:
    store = tmp_path / "store"
    source = shared_dicom / SERIES
    ingest(source, store, project="clear", progress=False, workers=1)
    with pytest.raises(EncryptionSettingError, match="already holds 1 volume"):
        ingest(source, store, project="clear", encrypt=True, key_file=key_file, progress=False)
    ingest(source, store, project="sealed", encrypt=True, key_file=key_file, progress=False)
    with pytest.raises(EncryptionSettingError, match="is encrypted"):
        ingest(source, store, project="sealed", encrypt=False, key_file=key_file, progress=False)
    # a later ingest of the project follows its setting, but needs the key
    use_keys(None)
    with pytest.raises(MissingKey, match="master key file"):
        ingest(source, store, project="sealed", key_file=None, progress=False)
    assert keys_in_use() is None


def test_labels_of_an_encrypted_volume_are_encrypted(
    tmp_path: Path, shared_dicom: Path, key_file: Path
) -> None:
    from voxelhub.roi.labels import read_labels, write_labels

    store = tmp_path / "store"
    ingest(
        shared_dicom / SERIES,
        store,
        project="p",
        encrypt=True,
        key_file=key_file,
        progress=False,
        workers=1,
    )
    cat = open_catalog(store)
    uid = cat.series().volume_uid.iloc[0]
    volume = np.asarray(cat.open_series(uid))
    mask = volume > np.percentile(volume, 90)
    write_labels(cat, uid, "bright", mask)
    stored = cat.stored_volume(uid)
    array = zarr.open_array(str(store / stored.labels_path("bright") / "0"))
    codecs = array.metadata.to_dict()["codecs"][0]["configuration"]["codecs"]
    assert codecs[-1]["name"] == "voxelhub.aes256gcm"
    assert np.array_equal(np.asarray(read_labels(cat, uid, "bright")).astype(bool), mask)
    use_keys(None)
    with pytest.raises(MissingKey):
        write_labels(cat, uid, "again", mask)
    assert not (store / stored.labels_path("again")).exists()
    cat.close()


def test_label_names_and_source_of_an_encrypted_volume_are_sealed(
    tmp_path: Path, shared_dicom: Path, key_file: Path
) -> None:
    """Value names and the source of a label image can name a patient or a reader: in an
    encrypted project they go into the label group's sealed object; reads merge them back."""
    from voxelhub.roi.labels import read_labels, write_labels

    store = tmp_path / "store"
    ingest(shared_dicom / SERIES, store, project="p", encrypt=True, key_file=key_file)
    cat = open_catalog(store)
    uid = cat.series().volume_uid.iloc[0]
    volume = np.asarray(cat.open_series(uid))
    regions = (volume > np.percentile(volume, 80)).astype(np.uint8)
    regions[volume > np.percentile(volume, 95)] = 2
    names = {1: "metastasis-of-Jane-Roe", 2: "necrotic-core-Roe-2024-03-05"}
    source = {"reader": "Dr Quentin Blackwood", "note": "outlined from the 2024-03-05 report"}
    write_labels(cat, uid, "findings", regions, names=names, source=source)
    secrets = [n.encode() for n in names.values()] + [v.encode() for v in source.values()]
    files = disk_bytes(store)
    group = store / cat.stored_volume(uid).labels_path("findings")
    assert (group / "voxelhub-attributes.sealed").is_file()
    assert found_in(secrets, files) == []
    # the same write in a clear project shows them: the search can fail
    clear = tmp_path / "clear"
    ingest(shared_dicom / SERIES, clear, project="c")
    plain = open_catalog(clear)
    write_labels(plain, plain.series().volume_uid.iloc[0], "findings", regions, names=names,
                 source=source)  # fmt: skip
    assert len(found_in(secrets, disk_bytes(clear))) == len(secrets)
    plain.close()

    labels = read_labels(cat, uid, "findings")
    assert labels.attrs["label_names"] == names
    assert labels.attrs["source"] == source and labels.attrs["stale"] is False
    assert np.array_equal(np.asarray(labels), regions)
    use_keys(None)
    with pytest.raises(MissingKey):
        read_labels(cat, uid, "findings")
    cat.close()


def test_a_seg_kept_pending_in_an_encrypted_project_is_sealed(
    tmp_path: Path, shared_dicom: Path, key_file: Path
) -> None:
    """A SEG that arrives before its series is kept in the store until the series comes: in an
    encrypted project its bytes and UIDs are sealed like everything else, and it still attaches."""
    import shutil

    from voxelhub.roi import list_labels, read_labels

    dcmqi = shared_dicom.parent / "roi" / "dcmqi_ct3_liver"
    seg = pydicom.dcmread(dcmqi / "liver.dcm", stop_before_pixels=True)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(dcmqi / "liver.dcm", folder)
    store = tmp_path / "store"
    early = ingest(folder, store, project="p", encrypt=True, key_file=key_file, progress=False)
    assert [i["status"] for i in early.labels] == ["pending"]
    pending = disk_bytes(store / "projects" / "p" / "pending-labels")
    secrets = {b"DICM", str(seg.SOPInstanceUID).encode(), str(seg.PatientID).encode()}
    assert found_in(secrets, pending) == []
    report = ingest(dcmqi / "image", store, project="p", key_file=key_file, progress=False)
    assert [i["status"] for i in report.labels] == ["attached"], report.labels
    cat = open_catalog(store)
    row = cat.series().iloc[0]
    (name,) = list_labels(cat, row)
    assert np.asarray(read_labels(cat, row, name)).any()
    label0 = store / cat.stored_volume(row.volume_uid).labels_path(name) / "0" / "zarr.json"
    assert b"voxelhub.aes256gcm" in label0.read_bytes()
    cat.close()


def test_fsck_verifies_encrypted_volumes_with_the_key_file(
    tmp_path: Path, shared_dicom: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess
    import sys

    from voxelhub.fsck import check_store

    store = tmp_path / "store"
    ingest(shared_dicom / SERIES, store, project="p", encrypt=True, key_file=key_file)
    use_keys(None)
    monkeypatch.delenv("VOXELHUB_KEY_FILE", raising=False)
    cli = [sys.executable, "-m", "voxelhub.cli", "fsck", "--store", str(store), "--verify"]
    out = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "needs the master key file" in out.stderr + out.stdout
    out = subprocess.run([*cli, "--key-file", str(key_file)], capture_output=True, text=True)
    assert out.returncode == 0 and "0 corrupt" in out.stdout, out.stdout + out.stderr
    cat = open_catalog(store)
    row = cat.series().iloc[0]
    shard = next(p for p in sorted((store / row.store_path / "0" / "c").rglob("*")) if p.is_file())
    raw = bytearray(shard.read_bytes())
    raw[300] ^= 0x10
    shard.write_bytes(bytes(raw))
    check = check_store(cat.location, cat, verify=True, key_file=str(key_file))
    assert check.corrupt == [row.store_path]
    cat.close()


def test_on_a_laptop_the_key_file_in_the_environment_opens_the_store(
    tmp_path: Path, shared_dicom: Path, key_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "store"
    ingest(shared_dicom / SERIES, store, project="p", encrypt=True, key_file=key_file)
    use_keys(None)
    monkeypatch.setenv("VOXELHUB_KEY_FILE", str(key_file))
    cat = open_catalog(store)
    uid = cat.series().volume_uid.iloc[0]
    volume = cat.open_series(uid)
    assert volume.attrs["acquisition"] and np.asarray(volume).any()
    assert keys_in_use() is not None
    cat.close()
