"""`import voxelhub` stays light, and `voxelhub ingest` reads headers before loading the store.

Each check runs in a fresh interpreter: this test process has long imported everything.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import voxelhub
from tests.dicom_factory import write_series

HEAVY = ("zarr", "sqlalchemy", "pandas", "nibabel", "xarray", "dask", "fsspec")


def _run(code: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_voxelhub_loads_no_heavy_module() -> None:
    code = (
        "import json, sys, voxelhub; "
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    assert _run(code) == []


def test_public_names_resolve_on_first_use() -> None:
    """Every name of ``voxelhub.__all__`` is there, lazily or not, and is the defining object."""
    code = """
import importlib, json, sys, voxelhub
out = {}
for name in voxelhub.__all__:
    value = getattr(voxelhub, name)
    out[name] = [getattr(value, "__module__", None), getattr(value, "__qualname__", None)]
out["_catalog_module"] = type(voxelhub.catalog).__name__
out["_ingest_is_function"] = callable(voxelhub.ingest) and not hasattr(voxelhub.ingest, "__path__")
out["_heavy_after"] = "sqlalchemy" in sys.modules
print(json.dumps(out))
"""
    out = _run(code)
    for name in voxelhub.__all__:
        value = getattr(voxelhub, name)
        expected = [getattr(value, "__module__", None), getattr(value, "__qualname__", None)]
        assert out[name] == expected, name
    assert out["_catalog_module"] == "module"  # submodules are still reachable as attributes
    assert out["_ingest_is_function"] and out["_heavy_after"]
    assert sorted(set(dir(voxelhub)) & set(voxelhub.__all__)) == sorted(voxelhub.__all__)


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        voxelhub.no_such_name  # noqa: B018
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("voxelhub.no_such_name did not raise AttributeError")


_FIRST_READ = """
import json, os, sys
folder, store = sys.argv[1], sys.argv[2]
def hook(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].startswith(folder):
        loaded = sorted(m for m in {heavy!r} if m in sys.modules)
        print(json.dumps({{"loaded": loaded, "store_exists": os.path.exists(store)}}))
        sys.stdout.flush()
        os._exit(0)
sys.addaudithook(hook)
from voxelhub.cli import main
sys.argv = ["voxelhub", "ingest", folder, "--store", store, "--quiet", "--workers", "1"]
main()
"""


def test_cli_ingest_reads_the_first_file_before_loading_store_and_catalog(
    tmp_path: Path,
) -> None:
    write_series(tmp_path / "in", slices=3, rows=8, columns=8)
    store = tmp_path / "store"
    # a quiet one-worker ingest needs no process pool nor tqdm.auto's asyncio either
    unneeded = (*HEAVY, "asyncio", "concurrent.futures.process", "multiprocessing")
    out = _run(_FIRST_READ.format(heavy=unneeded), str(tmp_path / "in"), str(store))
    assert out == {"loaded": [], "store_exists": False}
