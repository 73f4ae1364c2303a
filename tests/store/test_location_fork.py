"""A store on object storage used in forked processes (ingest's conversion workers).

s3fs runs on an event loop of the process that made it; a forked child that inherits the
location must make its own file system instead ("This class is not fork-safe").
"""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np

import voxelhub
from tests.dicom_factory import write_series


def _exists(location: object, rel: str, out: mp.Queue) -> None:  # type: ignore[type-arg]
    try:
        out.put(location.exists(rel))  # type: ignore[attr-defined]
    except Exception as exc:  # reported to the parent, which fails the test with it
        out.put(f"{type(exc).__name__}: {exc}")


def test_a_forked_child_uses_an_s3_location_made_before_the_fork(
    tmp_path: Path, s3_bucket: tuple[str, dict[str, str]]
) -> None:
    bucket, options = s3_bucket
    location = voxelhub.open_location(f"s3://{bucket}/store", options)
    location.fs.pipe(f"{bucket}/store/marker", b"x")  # used here first, on this process's loop
    assert location.exists("marker")

    context = mp.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_exists, args=(location, "marker", out))
    child.start()
    child.join(60)
    assert out.get(timeout=5) is True

    # what needs it: an ingest of several volumes converts them in forked workers
    for i in range(2):
        write_series(tmp_path / "in" / str(i), slices=5, patient_id=f"F{i}", seed=i)
    catalog_url = f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    report = voxelhub.ingest(
        tmp_path / "in", location, catalog_url=catalog_url, workers=2, progress=False
    )
    assert len(report.written) == 2 and not report.failed, report.summary()
    cat = voxelhub.open_catalog(f"s3://{bucket}/store", catalog_url=catalog_url,
                                storage_options=options)  # fmt: skip
    for uid in cat.series().volume_uid:
        assert np.asarray(cat.open_series(uid)).shape == (5, 32, 40)
    cat.close()
