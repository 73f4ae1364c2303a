"""Cohort packages between sites: export from one store, import into a fresh one.

Real scanner data (``../shared/data/dicom``) ingested de-identified, a label image and feature
rows added; the package must bring all of it across unchanged, refuse tampering with the object
named, refuse identifiable data, and import idempotently.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxelhub
from voxelhub.catalog import Catalog
from voxelhub.cohort import (
    IdentifiableData,
    IdentifiableProject,
    ImportConflict,
    TamperedPackage,
    UnsupportedPackage,
    export_cohort,
    import_cohort,
)
from voxelhub.cohort.package import MANIFEST
from voxelhub.features import Discretisation, ResultStore, Settings, extract_many
from voxelhub.roi.labels import read_labels, write_labels
from voxelhub.store.location import open_location

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VOXELHUB_SHARED") or REPO.parent / "shared")
SERIES = SHARED / "data" / "dicom" / "mr_siemens_fieldmap_2echo"  # two echoes: two volumes

FAST = Settings(
    discretisation=Discretisation("fbs", bin_width=100.0),
    families=("intensity_statistics",),
    aggregations=("3D_avg",),
)


def bright(volume: object) -> object:
    return np.asarray(volume) > np.asarray(volume).mean()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A site's store: the series de-identified, one label image, feature rows of both."""
    store = tmp_path_factory.mktemp("site-a") / "store"
    report = voxelhub.ingest(SERIES, store, project="trial", deidentify=True, progress=False)
    assert len(report.written) == 2 and not report.failed
    voxelhub.ingest(SERIES, store, project="clinic", workers=1, progress=False)  # identifiable
    cat = voxelhub.open_catalog(store)
    rows = cat.series(project="trial")
    uid = rows.iloc[0]["volume_uid"]
    volume = np.asarray(voxelhub.open_series(uid, catalog=cat))
    write_labels(cat, uid, "bright", (volume > volume.mean()).astype(np.uint8), names={1: "b"})
    extract_many(rows, roi={"bright": bright}, settings=FAST, catalog=cat, save_to=cat,
                 progress=False)  # fmt: skip
    cat.close()
    return store


def test_a_package_arrives_identical(source: Path, tmp_path: Path) -> None:
    package = str(tmp_path / "package")
    exported = export_cohort(source, package, project="trial", site="site-a")
    assert exported.volumes == 2
    manifest = json.loads((tmp_path / "package" / MANIFEST).read_text())
    assert manifest["provenance"]["source_site"] == "site-a"
    assert manifest["deidentification"]["profile"].startswith("PS3.15 E.1 Basic")
    assert manifest["features"]["rows"] > 0
    assert len(manifest["objects"]) == exported.objects

    target = tmp_path / "site-b" / "store"
    imported = import_cohort(package, target, project="shared")
    assert len(imported.written) == 2 and not imported.unchanged
    assert imported.provenance["source_site"] == "site-a"

    a, b = Catalog(open_location(str(source))), Catalog(open_location(str(target)))
    try:
        rows_a = a.series(project="trial").sort_values("volume_uid")
        rows_b = b.series(project="shared").sort_values("volume_uid")
        assert list(rows_a["volume_uid"]) == list(rows_b["volume_uid"])
        assert list(rows_a["checksum"]) == list(rows_b["checksum"])
        assert list(rows_a["patient_id"]) == list(rows_b["patient_id"])
        assert bool(b.projects(projects=["shared"]).iloc[0]["deidentify"])
        for uid in rows_a["volume_uid"]:
            sa, sb = a.stored_volume(uid), b.stored_volume(uid)
            assert sa.geometry == sb.geometry
            assert sa.labels == sb.labels
            assert np.array_equal(a.open_series(uid).values, b.open_series(uid).values)
            for name in sa.labels:
                la, lb = read_labels(a, uid, name), read_labels(b, uid, name)
                assert np.array_equal(np.asarray(la), np.asarray(lb))
        assert any(a.stored_volume(u).labels for u in rows_a["volume_uid"])
        fa = ResultStore(a).load(FAST).sort_values(["series", "roi", "feature"])
        fb = ResultStore(b).load(FAST).sort_values(["series", "roi", "feature"])
        assert len(fa) > 0
        assert fa.reset_index(drop=True).equals(fb.reset_index(drop=True))
    finally:
        a.close()
        b.close()
    # provenance kept in the store
    [kept] = (target / "projects" / "shared" / "cohorts").glob("*.json")
    assert json.loads(kept.read_text())["provenance"]["source_site"] == "site-a"

    # idempotent: the same package again changes nothing
    again = import_cohort(package, target, project="shared")
    assert not again.written and len(again.unchanged) == 2
    b = Catalog(open_location(str(target)))
    assert len(b.series(project="shared")) == 2
    assert len(ResultStore(b).load(FAST)) == len(fb)
    b.close()


def test_a_tampered_package_is_refused_with_the_object_named(source: Path, tmp_path: Path) -> None:
    package = tmp_path / "package"
    export_cohort(source, str(package), project="trial", site="site-a")
    manifest = json.loads((package / MANIFEST).read_text())
    chunk = next(rel for rel in sorted(manifest["objects"]) if "/c/" in rel)
    data = bytearray((package / chunk).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit
    (package / chunk).write_bytes(bytes(data))
    target = tmp_path / "site-b"
    with pytest.raises(TamperedPackage, match="does not match its SHA-256") as info:
        import_cohort(str(package), target, project="shared")
    assert info.value.object == chunk and chunk in str(info.value)
    assert not (target / "projects").exists()  # nothing written

    (package / chunk).unlink()
    with pytest.raises(TamperedPackage, match="missing") as info:
        import_cohort(str(package), target, project="shared")
    assert info.value.object == chunk
    (package / "volumes" / "extra.bin").write_bytes(b"smuggled")
    with pytest.raises(TamperedPackage):
        import_cohort(str(package), target, project="shared")


def test_identifiable_data_never_travels(source: Path, tmp_path: Path) -> None:
    with pytest.raises(IdentifiableProject, match="'clinic' is not de-identified"):
        export_cohort(source, str(tmp_path / "p1"), project="clinic", site="site-a")
    assert not (tmp_path / "p1").exists()

    # a package whose manifest claims identifiable data, checksums and all
    package = tmp_path / "p2"
    export_cohort(source, str(package), project="trial", site="site-a")
    manifest = json.loads((package / MANIFEST).read_text())
    manifest["deidentified"] = False
    (package / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IdentifiableData, match="not de-identified"):
        import_cohort(str(package), tmp_path / "site-b", project="shared")


def test_the_command_line(source: Path, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO / "workspace"), "VOXELHUB_SITE": "site-a"}
        return subprocess.run(
            [sys.executable, "-m", "voxelhub.cli", "cohort", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )

    package = tmp_path / "package"
    done = cli("export", str(package), "--store", str(source), "--project", "trial")
    assert done.returncode == 0, done.stderr
    assert "exported 2 volume(s)" in done.stdout and "manifest sha256" in done.stdout
    refused = cli("export", str(tmp_path / "p"), "--store", str(source), "--project", "clinic")
    assert refused.returncode == 2 and "is not de-identified" in refused.stderr
    assert "Traceback" not in refused.stderr
    target = tmp_path / "site-b"
    first = cli("import", str(package), "--store", str(target), "--project", "shared")
    assert first.returncode == 0 and "2 volume(s) imported" in first.stdout, first.stderr
    again = cli("import", str(package), "--store", str(target), "--project", "shared")
    assert again.returncode == 0 and "0 volume(s) imported, 2 unchanged" in again.stdout
    (package / MANIFEST).unlink()
    gone = cli("import", str(package), "--store", str(target), "--project", "shared")
    assert gone.returncode == 2 and "not a VoxelHub cohort package" in gone.stderr


def test_a_package_on_object_storage(
    source: Path, tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import s3fs

    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    options = {"key": "test", "secret": "test", "endpoint_url": s3_endpoint}
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    bucket = f"vh-{uuid.uuid4().hex[:10]}"
    fs.mkdir(bucket)
    url = f"s3://{bucket}/cohorts/trial-1"
    exported = export_cohort(source, url, project="trial", site="site-a", storage_options=options)
    assert fs.exists(f"{bucket}/cohorts/trial-1/{MANIFEST}")
    target = tmp_path / "site-b"
    imported = import_cohort(url, target, project="shared", storage_options=options)
    assert len(imported.written) == exported.volumes == 2
    a, b = Catalog(open_location(str(source))), Catalog(open_location(str(target)))
    for uid in a.series(project="trial")["volume_uid"]:
        assert np.array_equal(a.open_series(uid).values, b.open_series(uid).values)
        assert a.stored_volume(uid).geometry == b.stored_volume(uid).geometry
    a.close()
    b.close()
    # tampered in the bucket: refused, the object named
    manifest = json.loads(fs.cat_file(f"{bucket}/cohorts/trial-1/{MANIFEST}"))
    victim = next(rel for rel in sorted(manifest["objects"]) if rel.endswith("zarr.json"))
    fs.pipe_file(f"{bucket}/cohorts/trial-1/{victim}", b'{"zarr_format": 3}')
    with pytest.raises(TamperedPackage) as info:
        import_cohort(url, tmp_path / "site-c", project="shared", storage_options=options)
    assert info.value.object == victim


def _rewrite(package: Path, change: Any) -> None:
    """Edit a package as an attacker who also updates the manifest's checksums."""
    manifest = json.loads((package / MANIFEST).read_text())
    change(manifest)
    for rel in manifest["objects"]:
        if (package / rel).exists():
            manifest["objects"][rel] = hashlib.sha256((package / rel).read_bytes()).hexdigest()
    (package / MANIFEST).write_text(json.dumps(manifest))


def test_forged_packages_are_refused_before_anything_is_written(
    source: Path, tmp_path: Path
) -> None:
    package = tmp_path / "package"
    export_cohort(source, str(package), project="trial", site="site-a")
    target = tmp_path / "site-b"

    # a volume whose own attributes say it was not de-identified, checksums updated
    manifest = json.loads((package / MANIFEST).read_text())
    first = manifest["volumes"][0]
    root = package / first["path"] / "zarr.json"
    original = root.read_text()
    root.write_text(original.replace('"deidentified": true', '"deidentified": false'))
    assert root.read_text() != original
    _rewrite(package, lambda m: None)
    with pytest.raises(IdentifiableData, match=first["volume_uid"]):
        import_cohort(str(package), target, project="shared")
    root.write_text(original)
    _rewrite(package, lambda m: None)

    # a volume path that leaves the package
    def escape(m: dict[str, Any]) -> None:
        m["volumes"][0]["path"] = "../../elsewhere.ome.zarr"

    _rewrite(package, escape)
    with pytest.raises(UnsupportedPackage, match="its path must be"):
        import_cohort(str(package), target, project="shared")

    # catalog rows with columns VoxelHub does not have
    def extra_column(m: dict[str, Any]) -> None:
        m["volumes"][0]["path"] = f"volumes/{m['volumes'][0]['volume_uid']}.ome.zarr"
        m["volumes"][0]["volume"]["owner"] = "root"

    _rewrite(package, extra_column)
    with pytest.raises(UnsupportedPackage, match="not a VoxelHub catalog row"):
        import_cohort(str(package), target, project="shared")
    assert not (target / "projects").exists()

    # into an identifiable project, or over a different volume with the same UID: refused
    clean = tmp_path / "clean"
    export_cohort(source, str(clean), project="trial", site="site-a")
    voxelhub.ingest(SERIES, target, project="clinic", workers=1, progress=False)
    with pytest.raises(IdentifiableData, match="'clinic' is not de-identified"):
        import_cohort(str(clean), target, project="clinic")
    import_cohort(str(clean), target, project="shared")

    def other_content(m: dict[str, Any]) -> None:
        m["volumes"][1]["volume"]["checksum"] = "sha256:" + "0" * 64

    _rewrite(clean, other_content)
    before = Catalog(open_location(str(target)))
    count = len(before.series())
    before.close()
    with pytest.raises(ImportConflict, match="other content"):
        import_cohort(str(clean), target, project="shared")
    with pytest.raises(ImportConflict, match="already in project 'shared'"):
        import_cohort(str(clean), target, project="elsewhere")
    after = Catalog(open_location(str(target)))
    assert len(after.series()) == count and after.projects(projects=["elsewhere"]).empty
    after.close()
