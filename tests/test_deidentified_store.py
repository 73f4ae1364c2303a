"""A de-identified project holds no original value of the PS3.15 Basic Profile attributes.

The whole of ../shared/data/dicom is ingested with --deidentify; then every attribute written
(every volume's zarr.json of every level, the catalog's every table) is read back and searched
for every original value that the profile removes, empties or replaces.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pydicom
import pydicom.misc
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import inspect, text

import voxelhub
from voxelhub.dicom.deid import Deidentifier

NOT_IMAGES = {"DIRFILE", "SHA256SUMS", "LICENSE.txt", "PROVENANCE.md", "README.md"}


def _profile_values(ds: Dataset, tags: frozenset[int], out: set[str]) -> None:
    """Every non-trivial original value of a profile attribute, anywhere in the dataset."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                _profile_values(item, tags, out)
            continue
        if int(elem.tag) not in tags or elem.value in (None, ""):
            continue
        values = elem.value if isinstance(elem.value, pydicom.multival.MultiValue) else [elem.value]
        for v in values:
            s = str(v).strip()
            # short codes ("M", "O", "YES") also occur as unrelated values; names, IDs, UIDs,
            # dates and institutions are what identify someone
            if len(s) >= 6:
                out.add(s)


@pytest.fixture(scope="module")
def deidentified(tmp_path_factory: pytest.TempPathFactory, shared_dicom: Path):
    store = tmp_path_factory.mktemp("deid") / "store"
    report = voxelhub.ingest(shared_dicom, store, project="safe", deidentify=True, progress=False)
    assert not report.failed, report.summary()
    return store, report


@pytest.fixture(scope="module")
def originals(shared_dicom: Path) -> set[str]:
    tags = Deidentifier(b"x" * 32).profile_tags()
    values: set[str] = set()
    for path in shared_dicom.rglob("*"):
        if path.is_file() and path.name not in NOT_IMAGES and pydicom.misc.is_dicom(path):
            _profile_values(pydicom.dcmread(path, stop_before_pixels=True), tags, values)
    assert len(values) > 50  # names, IDs, UIDs, dates, institutions, stations, serials …
    return values


def _written_text(store: Path) -> str:
    """Every attribute and catalog value the ingest wrote, as one searchable text."""
    parts = [p.read_text() for p in (store / "projects").rglob("zarr.json")]
    cat = voxelhub.open_catalog(store)
    with cat.engine.connect() as conn:
        for table in inspect(conn).get_table_names():
            for row in conn.execute(text(f"SELECT * FROM {table}")).mappings():
                # every column, the input paths too: a de-identified project stores labels
                values = [str(v) for v in row.values()]
                parts.append(json.dumps(values))
    cat.close()
    return "\n".join(parts)


def test_no_original_value_of_the_profile_survives(deidentified, originals) -> None:
    store, _ = deidentified
    written = _written_text(store)
    # a value counts as found only as a whole token: a six-digit original time or ID can occur
    # by chance inside one of the thousands of 39-digit random 2.25 UIDs the store holds
    leaked = sorted(
        v
        for v in originals
        if v in written and re.search(rf"(?<![0-9A-Za-z]){re.escape(v)}(?![0-9A-Za-z])", written)
    )
    assert leaked == []


def test_marked_as_deidentified_with_the_profile_code(deidentified) -> None:
    store, _ = deidentified
    zarr_json = next((store / "projects" / "safe").glob("*/*.ome.zarr/zarr.json"))
    attrs = json.loads(zarr_json.read_text())["attributes"]["voxelhub"]
    assert attrs["deidentified"] is True
    header = Dataset.from_json(attrs["dicom"])
    assert header.PatientIdentityRemoved == "YES"
    codes = {item.CodeValue for item in header.DeidentificationMethodCodeSequence}
    assert "113100" in codes
    assert not any(elem.tag.is_private for elem in header)


def test_same_secret_same_uids_across_ingests(deidentified, shared_dicom, tmp_path) -> None:
    """A second store of the same project (same secret) maps UIDs identically."""
    store, _ = deidentified
    folder = shared_dicom / "mr_ge_mprage_3d_t1"
    other = tmp_path / "other"
    voxelhub.ingest(folder, other, project="safe", deidentify=True, progress=False)
    first = voxelhub.open_catalog(store).series()
    second = voxelhub.open_catalog(other).series()
    assert second.iloc[0]["series_uid"] in set(first["series_uid"])
    original = str(
        pydicom.dcmread(next(folder.glob("i*")), stop_before_pixels=True).SeriesInstanceUID
    )
    assert original not in set(first["series_uid"])


def test_identifiable_data_cannot_enter_a_deidentified_project(deidentified, shared_dicom) -> None:
    store, _ = deidentified
    with pytest.raises(voxelhub.CatalogError, match="de-identifies"):
        voxelhub.ingest(
            shared_dicom / "mr_ge_mprage_3d_t1",
            store,
            project="safe",
            deidentify=False,
            progress=False,
        )
