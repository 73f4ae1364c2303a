"""Sharded arrays read through ServiceLocation: a partial shard read in a few merged, concurrent
range requests (not one per inner chunk), with the same voxels as a direct read.

The server is a real HTTP server on loopback that serves a store folder under the data
service's ``api/store/`` path with one-range ``Range`` support, as the service does, and logs
every request; no authorisation (that is the service's, tested in tests/hub).
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
import zarr

from voxelhub.store.location import ServiceLocation
from voxelhub.store.service_store import CoalescingShardingCodec, ServiceStore

SHAPE = (48, 128, 128)
SHARDS = (32, 128, 128)
CHUNKS = (8, 32, 32)


class _Server:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.log: list[tuple[str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                prefix = "/services/voxelhub-data/api/store/"
                rng = self.headers.get("Range")
                server.log.append((self.path, rng))
                path = server.root / unquote(self.path[len(prefix) :])
                if not self.path.startswith(prefix) or not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                status = 200
                if rng:
                    first, last = re.fullmatch(r"bytes=(\d*)-(\d*)", rng).groups()  # type: ignore[union-attr]
                    if first == "":
                        start, stop = max(0, len(data) - int(last)), len(data)
                    else:
                        start = int(first)
                        stop = len(data) if last == "" else min(len(data), int(last) + 1)
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{stop - 1}/{len(data)}")
                    data, status = data[start:stop], 206
                else:
                    self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                self.wfile.write(data)

            do_HEAD = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/services/voxelhub-data"

    def ranged(self, key_part: str) -> list[str | None]:
        return [rng for path, rng in self.log if key_part in path and rng]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[_Server, np.ndarray]]:
    rng = np.random.default_rng(7)
    data = rng.integers(-1000, 3000, size=SHAPE, dtype=np.int16)
    arr = zarr.create_array(
        str(tmp_path / "v.zarr"), shape=SHAPE, dtype="int16", shards=SHARDS, chunks=CHUNKS
    )
    arr[:] = data
    server = _Server(tmp_path)
    try:
        yield server, data
    finally:
        server.close()


def _open(server: _Server, **store_options: int) -> tuple[zarr.Array, ServiceStore]:
    location = ServiceLocation(server.url, {"token": "unused"})
    store = location.zarr_store("v.zarr", read_only=True)
    assert isinstance(store, ServiceStore)
    for name, value in store_options.items():
        setattr(store, name, value)
    return zarr.open_array(store, mode="r"), store


def test_partial_shard_read_is_merged_and_equal(served: tuple[_Server, np.ndarray]) -> None:
    server, data = served
    arr, store = _open(server)
    assert isinstance(arr.metadata.codecs[0], CoalescingShardingCodec)
    server.log.clear()
    band = arr[8:16]  # one z-chunk of the first shard: 16 inner chunks of 32 x 32 x 8
    np.testing.assert_array_equal(band, data[8:16])
    ranged = server.ranged("v.zarr/c/0/0/0")
    # the index (a suffix range) and then the chunks, in far fewer requests than 16
    assert ranged[0] is not None and ranged[0].startswith("bytes=-")
    assert 2 <= len(ranged) <= 1 + 8, ranged
    assert store.requests == len(ranged) - 1


def test_unmerged_requests_are_one_per_chunk_and_still_equal(
    served: tuple[_Server, np.ndarray],
) -> None:
    server, data = served
    arr, store = _open(server, max_gap=-1)  # never merge: every inner chunk its own request
    server.log.clear()
    sagittal_band = arr[:, :, 64:96]  # crosses both shards
    np.testing.assert_array_equal(sagittal_band, data[:, :, 64:96])
    # shard 0: 4 x 4 chunks (z, y) of one x-column; shard 1: 2 x 4; plus one index each
    assert len(server.ranged("v.zarr/c/0/0/0")) == 1 + 16
    assert len(server.ranged("v.zarr/c/1/0/0")) == 1 + 8
    assert store.requests == 24


def test_whole_array_and_points_through_the_service(served: tuple[_Server, np.ndarray]) -> None:
    server, data = served
    arr, _ = _open(server)
    np.testing.assert_array_equal(arr[:], data)
    np.testing.assert_array_equal(arr[40, 100, 3], data[40, 100, 3])
    np.testing.assert_array_equal(arr[::7, 5, ::3], data[::7, 5, ::3])


def test_missing_shard_reads_as_fill_value(served: tuple[_Server, np.ndarray]) -> None:
    server, data = served
    os.remove(server.root / "v.zarr" / "c" / "1" / "0" / "0")
    arr, _ = _open(server)
    np.testing.assert_array_equal(arr[32:40, :64], np.zeros((8, 64, 128), dtype=np.int16))
    np.testing.assert_array_equal(arr[8:16, :64], data[8:16, :64])


def test_plan_merges_close_ranges_within_the_request_limit() -> None:
    store = ServiceStore(zarr.storage.MemoryStore(), max_gap=10, max_request=100)
    assert store.plan([(50, 60), (0, 10), (15, 20), (41, 45), (20, 30)]) == [(0, 30), (41, 60)]
    assert store.plan([(0, 60), (65, 120)]) == [(0, 60), (65, 120)]  # would be 120 bytes
    assert store.plan([(0, 10), (0, 10)]) == [(0, 10)]
    assert ServiceStore(zarr.storage.MemoryStore(), max_gap=-1).plan([(0, 10), (10, 20)]) == [
        (0, 10),
        (10, 20),
    ]


def test_local_arrays_keep_zarrs_reading(tmp_path: Path) -> None:
    """With the codec installed, an array in a local folder reads as before (zarr's path)."""
    from voxelhub.store.service_store import install

    install()
    data = np.arange(np.prod(SHAPE), dtype=np.int32).reshape(SHAPE)
    arr = zarr.create_array(
        str(tmp_path / "l.zarr"), shape=SHAPE, dtype="int32", shards=SHARDS, chunks=CHUNKS
    )
    arr[:] = data
    again = zarr.open_array(str(tmp_path / "l.zarr"), mode="r")
    assert isinstance(again.metadata.codecs[0], CoalescingShardingCodec)
    np.testing.assert_array_equal(again[8:16, :, 40:90], data[8:16, :, 40:90])


def test_an_array_read_through_the_service_survives_pickling(
    served: tuple[_Server, np.ndarray],
) -> None:
    """What a Dask worker gets in its task graph: the array, its ServiceStore and the codec."""
    import pickle

    server, data = served
    arr, _ = _open(server)
    again = pickle.loads(pickle.dumps(arr))
    assert isinstance(again.store, ServiceStore)
    assert isinstance(again.metadata.codecs[0], CoalescingShardingCodec)
    server.log.clear()
    np.testing.assert_array_equal(again[8:16, 32:96], data[8:16, 32:96])
    assert len(server.ranged("v.zarr/c/0/0/0")) == 2  # the index, then one merged request
