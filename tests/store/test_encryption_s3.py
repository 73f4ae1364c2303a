"""Encryption at rest on object storage (issue 13): the same per-chunk codec on an s3:// store.

A real series is ingested into an encrypted project of a bucket on moto's S3 server; then every
object of the bucket is listed and read through s3fs and searched for the source's voxels and
identifiers (none), while reads with the key give the clear ingest's voxels.  The key ring is in
the bucket (``<store>/.keys/``), wrapped; the master key file stays on local disk.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.store.test_encryption_at_rest import SERIES, found_in, source_secrets, voxel_runs
from voxelhub import ingest, open_catalog, open_location
from voxelhub.store.encryption import keys_in_use, use_keys
from voxelhub.store.keys import FileKeyProvider, MissingKey
from voxelhub.store.reencrypt import Outcome, reencrypt_project, retire_old_keys, tree_key_ids

pytestmark = pytest.mark.usefixtures("no_keys_left")  # conftest


def bucket_objects(fs: Any, bucket: str) -> dict[Path, bytes]:
    """Every object of the bucket, read through s3fs (what a stolen bucket gives)."""
    return {Path(key): fs.cat_file(key) for key in sorted(fs.find(bucket))}


def test_an_encrypted_project_on_s3_leaves_nothing_in_the_clear(
    tmp_path: Path, shared_dicom: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    from voxelhub.roi.labels import read_labels, write_labels

    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "VOXELHUB_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    options = {
        "key": "test",
        "secret": "test",
        "endpoint_url": s3_endpoint,
        "skip_instance_cache": True,
    }
    fs = s3fs.S3FileSystem(**options)
    bucket = f"vh-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    source = shared_dicom / SERIES
    secrets = source_secrets(source)

    clear = tmp_path / "clear"
    ingest(source, clear, project="plain", progress=False, workers=1)
    plain = open_catalog(clear)
    expected = np.asarray(plain.open_series(plain.series().volume_uid.iloc[0]))
    plain.close()

    key_file = FileKeyProvider.create(tmp_path / "secret" / "master.json").path
    url = f"s3://{bucket}/store"
    catalog_url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    location = open_location(url, options)
    report = ingest(
        source,
        location,
        catalog_url=catalog_url,
        project="sealed",
        deidentify=True,
        encrypt=True,
        key_file=key_file,
        progress=False,
    )
    assert report.written and not report.failed, report.summary()
    cat = open_catalog(url, catalog_url=catalog_url, storage_options=options)
    uid = cat.series().volume_uid.iloc[0]
    regions = (expected > np.percentile(expected, 90)).astype(np.uint8)
    names = {1: "lesion-of-Jane-Roe-2024"}
    write_labels(cat, uid, "bright", regions, names=names)

    objects = bucket_objects(fs, bucket)
    ring_objects = [p for p in objects if ".keys" in p.parts]
    assert ring_objects, "the wrapped key ring is in the bucket"
    for path in ring_objects:
        record = json.loads(objects[path])
        assert all(set(v) >= {"master", "wrapped"} for v in record["versions"].values())
    assert not any(p.name == "master.json" for p in objects)  # the master key never goes there
    assert len(objects) > 10
    assert found_in(voxel_runs(expected), objects) == []
    assert found_in(secrets, objects) == []
    assert found_in([n.encode() for n in names.values()], objects) == []

    # with the key, the clear ingest's voxels; a fresh process's view: the ring from the bucket
    use_keys(None)
    monkeypatch.setenv("VOXELHUB_KEY_FILE", str(key_file))
    assert np.array_equal(np.asarray(cat.open_series(uid)), expected)
    assert keys_in_use() is not None and keys_in_use().files is not None  # type: ignore[union-attr]
    labels = read_labels(cat, uid, "bright")
    assert labels.attrs["label_names"] == names and np.array_equal(np.asarray(labels), regions)

    # a data-key rotation re-encrypts the bucket's volume; the old key is then retired
    ring = keys_in_use()
    assert ring is not None
    old, new = ring.current("sealed"), ring.rotate("sealed")
    done = reencrypt_project(cat, "sealed", ring, linger_seconds=0)
    assert done.count(Outcome.REWRITTEN) == 1 and len(done.removed) == 1
    rel = cat.series().store_path.iloc[0]
    assert tree_key_ids(cat.location, rel) == {new}
    assert retire_old_keys(cat, "sealed", ring) == [old]
    use_keys(None)
    assert np.array_equal(np.asarray(cat.open_series(uid)), expected)
    assert np.array_equal(np.asarray(read_labels(cat, uid, "bright")), regions)

    monkeypatch.delenv("VOXELHUB_KEY_FILE")
    use_keys(None)
    with pytest.raises(MissingKey, match=new):
        np.asarray(cat.open_series(uid))
    cat.close()
