"""Catalog queries built for scale: keyset paging, the full-text and flag indexes, migrations.

Small catalogs only (a few hundred volumes); the 100,000-volume timings are in
``benchmarks/catalog.py``.  Every test runs on SQLite and, through `make test`, on PostgreSQL.
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import create_engine, delete, insert, text, update
from sqlalchemy.schema import CreateIndex, CreateTable

from tests.conftest import postgres_database
from tests.test_catalog import catalog_url  # noqa: F401 - a fixture
from voxelhub.catalog import (
    Base,
    Catalog,
    Study,
    Volume,
    decode_cursor,
    encode_cursor,
    make_engine,
    readonly_sqlite_url,
)
from voxelhub.errors import CatalogError

PROJECTS = ["alpha", "beta", "gamma"]
STUDY_UIDS = [f"1.2.826.0.1.{n}" for n in (7, 10, 11, 9, 100, 3, 12, 1, 8, 2)]
SERIES_TEXT = [
    "CT CHEST W/O",
    "Chest, low-dose",
    "T1-weighted AX",
    "t1_mprage_sag",
    "b1000 DWI",
    "100% dose",
    "axial",
    "Knee (left)",
    'Say "cheese"',
    "",
]
STUDY_TEXT = ["CHEST CT", "Brain MRI w/o contrast", "knee", "Thorax", ""]
QUERIES = [
    "chest",
    "CHEST",
    "cHeSt",
    "w/o",
    "T1-w",
    "t1_m",
    "1_m",
    "b1000",
    "100%",
    "0%",
    "(left)",
    '"cheese"',
    "se, lo",
    "ct",  # 2 characters: LIKE
    "x",
    "no such words",
]
OLD_INDEXES = {
    "ix_studies_study_uid",
    "ix_rejected_files_report_id",
    "ix_volumes_modality",
    "ix_volumes_series_uid",
    "ix_volumes_study_id",
}
"""The indexes of the schema before keyset paging and full-text search."""


class _Store:
    """The little of a store location the catalog needs when it is given a catalog URL."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.url = str(root)
        self.is_local = True

    def ensure_root(self) -> None:
        os.makedirs(self.root, exist_ok=True)

    def catalog_file(self) -> str:
        return os.path.join(self.root, "catalog.sqlite")


def _url(tmp_path: Path, catalog_url: str | None) -> str:  # noqa: F811 - the fixture's value
    return catalog_url or f"sqlite:///{tmp_path}/store/catalog.sqlite"


def _volume(uid: str, rng: random.Random, **values: Any) -> dict[str, Any]:
    flags = rng.choice([[], [], [], ["missing_slices"], ["gantry_tilt", "missing_slices"]])
    row = {
        "volume_uid": uid,
        "series_uid": uid.split("#")[0],
        "series_number": rng.choice([None, 1, 1, 2, 3]),
        "split": rng.choice(["", "", "echo=1", "echo=2"]),
        "modality": rng.choice(["CT", "MR"]),
        "body_part": "",
        "description": rng.choice(SERIES_TEXT),
        "manufacturer": "",
        "slices": 3,
        "rows": 4,
        "columns": 4,
        "spacing_z": 1.0,
        "spacing_y": 1.0,
        "spacing_x": 1.0,
        "dtype": "int16",
        "flags": flags,
        # sometimes the text names a flag the volume does not have
        "reasons": "; ".join(f"[{f}] why" for f in flags) or rng.choice(["", "[gantry_tilt] no"]),
        "store_path": f"projects/x/{uid}.ome.zarr",
        "checksum": "c",
        "content_key": "k",
        "n_instances": 3,
    }
    row.update(values)
    return row


class Reference:
    """What the catalog should hold, kept beside it: the rows a LIKE scan would find."""

    def __init__(self) -> None:
        self.volumes: dict[str, dict[str, Any]] = {}  # uid → volume with "study" (its key)
        self.studies: dict[tuple[str, str, str], str] = {}  # (project, patient, uid) → text

    def study_text(self, uid: str) -> str:
        return self.studies[self.volumes[uid]["study"]]

    def matching(self, query: str) -> set[str]:
        q = query.lower()
        return {
            uid
            for uid, v in self.volumes.items()
            if q in v["description"].lower() or q in self.study_text(uid).lower()
        }

    def flagged(self, flag: str) -> set[str]:
        return {uid for uid, v in self.volumes.items() if flag in v["flags"]}


def fill(catalog: Catalog, n: int, seed: int = 1, reference: Reference | None = None) -> Reference:
    """``n`` volumes through ``record_volume``, with ties at every level of the order.

    The same StudyInstanceUID under several patients and projects, several volumes of one
    series number (splits), volumes without a series number.
    """
    rng = random.Random(seed)
    reference = reference or Reference()
    projects = {name: catalog.ensure_project(name, deidentify=False) for name in PROJECTS}
    for i in range(n):
        project = rng.choice(PROJECTS)
        patient = f"P{rng.randrange(6)}"
        study_uid = rng.choice(STUDY_UIDS)
        key = (project, patient, study_uid)
        described = reference.studies.setdefault(key, rng.choice(STUDY_TEXT))
        uid = f"1.3.{seed}.{i}" + rng.choice(["", "#2"])
        volume = _volume(uid, rng)
        catalog.record_volume(
            projects[project],
            {"patient_key": patient},
            {"study_uid": study_uid, "description": described, "study_date": "20240101"},
            volume,
        )
        reference.volumes[uid] = {**volume, "study": key, "project": project}
    return reference


@pytest.fixture
def catalog(tmp_path: Path, catalog_url: str | None) -> Iterator[Catalog]:  # noqa: F811
    cat = Catalog(_Store(tmp_path / "store"), _url(tmp_path, catalog_url))
    yield cat
    cat.close()


@pytest.fixture
def filled(catalog: Catalog) -> tuple[Catalog, Reference]:
    """A catalog of its own, for a test that changes it."""
    return catalog, fill(catalog, 240)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Catalog, Reference]]:
    """One filled catalog per backend for the tests that only read (filling takes seconds)."""
    root = tmp_path_factory.mktemp("shared") / "store"
    if request.param == "sqlite":
        cat = Catalog(_Store(root), f"sqlite:///{root}/catalog.sqlite")
        yield cat, fill(cat, 240)
        cat.close()
        return
    with postgres_database() as url:
        cat = Catalog(_Store(root), url)
        try:
            yield cat, fill(cat, 240)
        finally:
            cat.close()


@pytest.fixture(params=["walk", "fetch"])
def plan(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a filtered page can be made: walk the ordered index, or fetch and sort."""
    walk = request.param == "walk"
    monkeypatch.setattr(Catalog, "_walk", staticmethod(lambda *_: walk))
    return str(request.param)


def _pages(query: Any, size: int, **filters: Any) -> list[str]:
    """Every page of ``query(**filters)`` by cursor; checks each page's length and cursor."""
    uids: list[str] = []
    after = None
    for _ in range(10_000):
        page = query(**filters, limit=size, after=after)
        after = page.attrs["next_cursor"]
        key = "volume_uid" if "volume_uid" in page else "study_uid"
        uids += list(page[key])
        if after is None:
            assert len(page) <= size
            return uids
        assert len(page) == size and isinstance(after, str)
    raise AssertionError("paging never ended")


# -- keyset paging --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"project": "beta"},
        {"projects": ["alpha", "gamma"]},
        {"modality": "MR"},
        {"text": "chest"},
        {"text": "ct"},
        {"flag": "missing_slices"},
        {"study_uid": STUDY_UIDS[0]},
        {"patient": "P1", "projects": ["alpha", "beta"]},
    ],
    ids=lambda f: ",".join(f) or "none",
)
def test_keyset_pages_are_the_listing(
    shared: tuple[Catalog, Reference], filters: dict[str, Any]
) -> None:
    """Pages joined by their cursors are the full ordered listing: no repeats, no gaps."""
    cat, _ = shared
    listing = list(cat.series(**filters)["volume_uid"])
    assert listing and len(set(listing)) == len(listing)
    # a text or flag filter makes its page by walking the order or by fetching and sorting
    walks = (True, False) if {"text", "flag"} & set(filters) else (None,)
    for walk in walks:
        with pytest.MonkeyPatch.context() as m:
            if walk is not None:
                m.setattr(Catalog, "_walk", staticmethod(lambda *_, w=walk: w))
            for size in (1, 7, len(listing) + 1) if not filters else (7, 50, len(listing)):
                assert _pages(cat.series, size, **filters) == listing
            by_offset = [
                uid
                for start in range(0, len(listing), 7)
                for uid in cat.series(**filters, limit=7, offset=start)["volume_uid"]
            ]
            assert by_offset == listing
            # offset and cursor together: the offset counts from the cursor
            first = cat.series(**filters, limit=5)
            if first.attrs["next_cursor"]:
                rest = cat.series(**filters, limit=3, offset=2, after=first.attrs["next_cursor"])
                assert list(rest["volume_uid"]) == listing[7:10]


def test_listing_order_is_total(shared: tuple[Catalog, Reference]) -> None:
    """(StudyInstanceUID, study row, series number with none first, split, volume row)."""
    cat, reference = shared
    with cat.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT v.volume_uid, s.study_uid, s.id, v.series_number, v.split, v.id "
                "FROM volumes v JOIN studies s ON v.study_id = s.id"
            )
        ).all()
    keys = {r[0]: (r[1], r[2], -1 if r[3] is None else r[3], r[4], r[5]) for r in rows}
    listing = list(cat.series()["volume_uid"])
    assert set(listing) == set(reference.volumes)
    ordered = [keys[uid] for uid in listing]
    if cat.engine.dialect.name == "sqlite":  # binary collation: Python's order
        assert ordered == sorted(ordered)
    else:  # the server's collation orders the strings; the numbers must still follow
        assert all(a[:1] != b[:1] or a <= b for a, b in pairwise(ordered))
    # the data has ties at each level, so every part of the key is needed
    assert len({k[0] for k in ordered}) < len({k[:2] for k in ordered})
    assert len({k[:3] for k in ordered}) < len({k[:4] for k in ordered}) < len(ordered)


def test_studies_keyset_pages(shared: tuple[Catalog, Reference]) -> None:
    cat, _ = shared
    filters: dict[str, Any]
    for filters in (
        {},
        {"project": "alpha"},
        {"modality": "CT"},
        {"text": "ches"},
        {"patient": "P1"},
    ):
        listing = cat.studies(**filters)
        assert not listing.duplicated(["project", "patient_id", "study_uid"]).any()
        pages = []
        after = None
        while True:
            page = cat.studies(**filters, limit=4, after=after)
            assert list(page.columns) == list(listing.columns)
            pages.append(page)
            after = page.attrs["next_cursor"]
            if after is None:
                break
        joined = pd.concat(pages, ignore_index=True)
        assert joined.to_dict("records") == listing.to_dict("records"), filters
    # the volume counts agree with the series listing
    counts = cat.series().groupby(["project", "patient_id", "study_uid"]).size()
    for r in cat.studies().itertuples():
        assert r.volumes == counts[(r.project, r.patient_id, r.study_uid)]


def test_projects_filter(shared: tuple[Catalog, Reference]) -> None:
    cat, reference = shared
    assert list(cat.projects()["name"]) == PROJECTS
    assert list(cat.projects(projects=["gamma", "nope"])["name"]) == ["gamma"]
    assert cat.series(projects=[]).empty and cat.studies(projects=[]).empty
    got = set(cat.series(projects=["alpha", "gamma"])["volume_uid"])
    assert got == {u for u, v in reference.volumes.items() if v["project"] in ("alpha", "gamma")}
    assert set(cat.series(project="beta", projects=["alpha"])["volume_uid"]) == set()


def test_bad_cursors_are_clear_errors(shared: tuple[Catalog, Reference]) -> None:
    cat, _ = shared
    page = cat.series(limit=3)
    cursor = page.attrs["next_cursor"]
    studies_cursor = cat.studies(limit=1).attrs["next_cursor"]
    flipped = cursor[:10] + ("A" if cursor[10] != "A" else "B") + cursor[11:]
    forged = encode_cursor("series", ["1.2", "not a row id", 1, "", 1])
    for bad in [
        "garbage",
        "",
        "!!!!",
        flipped,
        cursor[:-3],
        cursor + "AAAA",
        "é" * 20,
        studies_cursor,
        forged,
        "x" * 10_000,
    ]:
        with pytest.raises(CatalogError, match="invalid paging cursor"):
            cat.series(limit=3, after=bad)
    with pytest.raises(CatalogError, match="invalid paging cursor"):
        cat.studies(limit=3, after=cursor)
    with pytest.raises(CatalogError, match="invalid paging cursor"):
        cat.series(limit=3, after=12345)  # type: ignore[arg-type]
    with pytest.raises(CatalogError, match="limit"):
        cat.series(limit=-1)
    with pytest.raises(CatalogError, match="offset"):
        cat.series(limit=1, offset=-5)
    # what a cursor holds round-trips, and is URL-safe
    values = decode_cursor(cursor, "series", (str, int, int, str, int))
    assert encode_cursor("series", values) == cursor
    assert all(c.isalnum() or c in "-_" for c in cursor)
    assert cat.series(limit=0).attrs["next_cursor"] is None


# -- full-text search -----------------------------------------------------------------------------


def test_search_finds_what_like_finds(
    shared: tuple[Catalog, Reference], plan: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trigram index finds exactly the rows a case-insensitive substring scan finds."""
    cat, reference = shared
    for query in QUERIES:
        expected = reference.matching(query)
        assert set(cat.search(query)["volume_uid"]) == expected, query
        assert set(_pages(cat.series, 9, text=query)) == expected, query
    if cat.engine.dialect.name == "sqlite":
        assert {"volumes_fts", "studies_fts"} <= cat._sqlite_search
        monkeypatch.setattr(cat, "_sqlite_search", frozenset())  # as a catalog without them
        for query in QUERIES:
            assert set(cat.search(query)["volume_uid"]) == reference.matching(query), query


def test_studies_text(shared: tuple[Catalog, Reference]) -> None:
    cat, reference = shared
    where = {
        r.volume_uid: (r.project, r.patient_id, r.study_uid) for r in cat.series().itertuples()
    }
    for query in ("ches", "W/O", "knee", "t", "zzz"):
        got = {(r.project, r.patient_id, r.study_uid) for r in cat.studies(text=query).itertuples()}
        expected = {
            where[uid]
            for uid in reference.volumes
            if query.lower() in reference.study_text(uid).lower()
        }
        assert got == expected, query


def _fts_integrity(cat: Catalog) -> None:
    """FTS5's own check of an external-content index against its table (raises if off)."""
    if cat.engine.dialect.name != "sqlite":
        return
    with cat.engine.begin() as conn:
        for table in ("volumes_fts", "studies_fts"):
            conn.execute(text(f"INSERT INTO {table}({table}, rank) VALUES ('integrity-check', 1)"))
        # the flag table holds exactly the flags of the volumes
        wrong = conn.execute(
            text(
                "SELECT count(*) FROM (SELECT j.value, v.id FROM volumes v, json_each(v.flags) j "
                "EXCEPT SELECT flag, volume_id FROM volume_flags)"
            )
        ).scalar()
        extra = conn.execute(
            text(
                "SELECT count(*) FROM volume_flags f LEFT JOIN volumes v ON v.id = f.volume_id "
                "WHERE v.id IS NULL"
            )
        ).scalar()
        assert wrong == 0 and extra == 0


def test_indexes_follow_inserts_replacements_and_deletes(filled: tuple[Catalog, Reference]) -> None:
    cat, reference = filled
    _fts_integrity(cat)
    rng = random.Random(5)
    project = cat.ensure_project("alpha")
    # replacements: record_volume of an existing UID (new text, new flags, another study)
    for uid in sorted(reference.volumes)[:40]:
        study_uid = cat.series(uid=uid).iloc[0]["study_uid"]
        key = ("alpha", "P9", study_uid)
        described = reference.studies.setdefault(key, "Replaced study")
        volume = _volume(uid, rng, description=f"replaced {uid} CHEST-ish", flags=["gantry_tilt"])
        cat.record_volume(
            project,
            {"patient_key": "P9"},
            {"study_uid": study_uid, "description": described},
            volume,
        )
        reference.volumes[uid] = {**volume, "study": key, "project": "alpha"}
    # deletes
    gone = sorted(reference.volumes)[40:60]
    with cat.session() as s:
        s.execute(delete(Volume).where(Volume.volume_uid.in_(gone)))
    for uid in gone:
        del reference.volumes[uid]
    # updates in place: the description of one StudyInstanceUID's studies, a volume's flags
    last = sorted(reference.volumes)[-1]
    with cat.session() as s:
        s.execute(
            update(Study).where(Study.study_uid == STUDY_UIDS[1]).values(description="Pelvis")
        )
        s.execute(
            update(Volume)
            .where(Volume.volume_uid == last)
            .values(flags=["non_uniform_spacing"], description="updated text")
        )
    for key in reference.studies:
        if key[2] == STUDY_UIDS[1]:
            reference.studies[key] = "Pelvis"
    reference.volumes[last].update(flags=["non_uniform_spacing"], description="updated text")
    # more inserts
    fill(cat, 60, seed=2, reference=reference)
    _fts_integrity(cat)
    for query in [*QUERIES, "replaced", "pelvis", "updated text", "CHEST-ish"]:
        assert set(cat.search(query)["volume_uid"]) == reference.matching(query), query
    for flag in ("gantry_tilt", "missing_slices", "non_uniform_spacing"):
        assert set(cat.series(flag=flag)["volume_uid"]) == reference.flagged(flag), flag


# -- flags ----------------------------------------------------------------------------------------


def test_flag_filter_reads_flags_not_reasons(catalog: Catalog, plan: str) -> None:
    rng = random.Random(3)
    project = catalog.ensure_project("p")
    rows = {
        "only-text": {"flags": [], "reasons": "[missing_slices] mentioned, not flagged"},
        "flagged": {"flags": ["missing_slices"], "reasons": ""},
        "both": {"flags": ["gantry_tilt", "missing_slices"], "reasons": "[missing_slices] x"},
        "other": {"flags": ["missing_slices_2"], "reasons": "[missing_slices_2]"},
        "prefix": {"flags": ["missing"], "reasons": ""},
    }
    for uid, values in rows.items():
        catalog.record_volume(
            project, {"patient_key": "A"}, {"study_uid": "1.2"}, _volume(uid, rng, **values)
        )
    expected = {"flagged", "both"}
    assert set(catalog.series(flag="missing_slices")["volume_uid"]) == expected
    assert set(catalog.series(flag="missing_slices", limit=1)["volume_uid"]) <= expected
    assert set(_pages(catalog.series, 1, flag="missing_slices")) == expected
    assert set(catalog.series(flag="MISSING_SLICES")["volume_uid"]) == set()
    assert set(catalog.series(flag="missing")["volume_uid"]) == {"prefix"}
    if catalog.engine.dialect.name == "sqlite":  # without the flag table: json_each
        catalog._sqlite_search = frozenset()  # type: ignore[misc]
        assert set(catalog.series(flag="missing_slices")["volume_uid"]) == expected


# -- catalogs made by an earlier VoxelHub ---------------------------------------------------------


def _old_catalog(url: str, reference: Reference, n: int = 150) -> None:
    """The tables of the previous schema, with its indexes only, and rows inserted directly."""
    rng = random.Random(9)
    engine = make_engine(url)
    with engine.begin() as conn:
        for table in Base.metadata.sorted_tables:
            conn.execute(CreateTable(table))
            for index in table.indexes:
                if index.name in OLD_INDEXES:
                    conn.execute(CreateIndex(index))
        tables = Base.metadata.tables
        conn.execute(
            insert(tables["projects"]),
            [{"id": 1, "name": "old", "deidentify": False, "description": ""}],
        )
        patient = {"project_id": 1, "patient_name": "", "sex": "", "birth_date": ""}
        conn.execute(
            insert(tables["patients"]),
            [{"id": i, "patient_key": f"P{i}", **patient} for i in range(1, 4)],
        )
        studies = []
        for i, uid in enumerate(STUDY_UIDS, start=1):
            studies.append(
                {
                    "id": i,
                    "patient_id": 1 + i % 3,
                    "study_uid": uid,
                    "study_date": "2020",
                    "description": STUDY_TEXT[i % len(STUDY_TEXT)],
                    "accession_number": "",
                }
            )
        conn.execute(insert(tables["studies"]), studies)
        volumes = []
        for i in range(1, n + 1):
            study = studies[i % len(studies)]
            volume = _volume(f"old.{i}", rng, id=i, study_id=study["id"], timepoints=1)
            volumes.append(volume)
            key = ("old", f"P{study['patient_id']}", study["study_uid"])
            reference.studies[key] = study["description"]
            reference.volumes[volume["volume_uid"]] = {**volume, "study": key, "project": "old"}
        conn.execute(insert(tables["volumes"]), volumes)
        if engine.dialect.name == "postgresql":  # ids were given: move the sequences on
            for name in ("projects", "patients", "studies", "volumes"):
                conn.execute(
                    text(
                        f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), max(id)) FROM {name}"
                    )
                )
    engine.dispose()


def _search_objects(cat: Catalog) -> set[str]:
    with cat.engine.connect() as conn:
        if cat.engine.dialect.name == "sqlite":
            return set(conn.scalars(text("SELECT name FROM sqlite_master")))
        return set(
            conn.scalars(text("SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"))
        )


def test_old_catalog_is_upgraded_on_open(
    tmp_path: Path,
    catalog_url: str | None,  # noqa: F811
) -> None:
    url = _url(tmp_path, catalog_url)
    reference = Reference()
    (tmp_path / "store").mkdir()
    _old_catalog(url, reference)
    sqlite = url.startswith("sqlite")
    new_objects = {
        "ix_volumes_study_order",
        "ix_studies_uid_id_patient",
        "ix_studies_date_uid_id_patient",
        "ix_patients_patient_key",
    }
    new_objects |= (
        {"volumes_fts", "studies_fts", "volume_flags", "volumes_fts_insert", "volume_flags_delete"}
        if sqlite
        else {"ix_volumes_description_trgm", "ix_studies_description_trgm", "ix_volumes_flags_gin"}
    )

    # a reader (create=False) changes nothing and still answers, without the new indexes
    reader = Catalog(_Store(tmp_path / "store"), url, create=False)
    assert not new_objects & _search_objects(reader)
    for query in QUERIES:
        assert set(reader.search(query)["volume_uid"]) == reference.matching(query), query
    assert set(reader.series(flag="gantry_tilt")["volume_uid"]) == reference.flagged("gantry_tilt")
    assert _pages(reader.series, 8) == list(reader.series()["volume_uid"])
    assert not new_objects & _search_objects(reader)
    reader.close()

    if sqlite:  # another user's copy, opened read-only (immutable): no upgrade, still answers
        shared = tmp_path / "shared" / "catalog.sqlite"
        shared.parent.mkdir()
        shutil.copy(tmp_path / "store" / "catalog.sqlite", shared)
        ro = Catalog(_Store(shared.parent), readonly_sqlite_url(str(shared)))
        assert ro.read_only and ro._sqlite_search == frozenset()
        assert set(ro.search("chest")["volume_uid"]) == reference.matching("chest")
        assert set(ro.series(flag="missing_slices")["volume_uid"]) == reference.flagged(
            "missing_slices"
        )
        assert _pages(ro.series, 11, text="ches") == list(ro.series(text="ches")["volume_uid"])
        ro.close()

    # the first keyset indexes, which the ones with the patient replaced
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE INDEX ix_studies_uid_id ON studies (study_uid, id)"))
        conn.execute(
            text("CREATE INDEX ix_studies_date_uid_id ON studies (study_date, study_uid, id)")
        )
    engine.dispose()

    # a writer upgrades it once: indexes created (the replaced ones dropped), full-text and flag
    # tables filled
    cat = Catalog(_Store(tmp_path / "store"), url)
    assert new_objects <= _search_objects(cat)
    assert not {"ix_studies_uid_id", "ix_studies_date_uid_id"} & _search_objects(cat)
    _fts_integrity(cat)
    for query in QUERIES:
        assert set(cat.search(query)["volume_uid"]) == reference.matching(query), query
    for flag in ("gantry_tilt", "missing_slices"):
        assert set(cat.series(flag=flag)["volume_uid"]) == reference.flagged(flag)
    cat.close()
    # and the next open finds it up to date; new rows reach the new indexes
    again = Catalog(_Store(tmp_path / "store"), url)
    fill(again, 30, seed=4, reference=reference)
    _fts_integrity(again)
    for query in QUERIES:
        assert set(again.search(query)["volume_uid"]) == reference.matching(query), query
    again.close()
