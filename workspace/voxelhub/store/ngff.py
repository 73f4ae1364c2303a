"""OME-Zarr (NGFF 0.5) layout: pyramid shape, chunking, codecs and the multiscales metadata.

The multiscales block is a dozen lines of JSON, written here and validated in the tests by two
maintained NGFF libraries (``ome-zarr-models``' pydantic schema and ``ome-zarr-py``'s reader).
Writing it through ome-zarr-py cost 1.1 s of imports (dask, scipy, scikit-image) on every CLI
ingest, more than converting a 140-slice CT.  Pixels are written by zarr-python directly, because
we stream slabs, shard, and choose codecs ourselves — ngff-zarr ≥ 0.44 writes only whole
in-memory images to local folders and refuses object stores.

NGFF 0.5 has no place for a full affine (that arrives with RFC-5 in 0.6), so the scale and
translation here describe the volume in its own index frame (z along the slice normal, from the
first slice) and the LPS affine / direction matrix live in the ``voxelhub`` attributes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

NGFF_VERSION = "0.5"
AXES = [{"name": n, "type": "space", "unit": "millimeter"} for n in ("z", "y", "x")]
TIME_AXIS = {"name": "t", "type": "time", "unit": "second"}
CHANNEL_AXIS = {"name": "c", "type": "channel"}
"""A colour volume's channel axis: after ``t`` and before ``z, y, x``, as NGFF 0.5 orders them."""
DIMENSION_NAMES = ("z", "y", "x")
THUMBNAIL_SIZE = 64
"""The pyramid stops at the first level whose largest in-plane side is at most this."""
SLAB_DEPTH = 64
"""Slices converted at once: one level-0 shard deep.  Memory is a small multiple of one slab."""
INNER_CHUNK = (16, 64, 64)
"""Inner chunk of every shard: small enough for a slice viewer and for 3-D blocks."""
MAX_LEVELS = 7


def compressor() -> BloscCodec:
    """Lossless codec: Blosc-LZ4 with byte shuffle (≈300 MB/s here, against ≈60 MB/s for zstd)."""
    return BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle)


@dataclass(frozen=True)
class Level:
    """One pyramid level: its array path, shape, and downsampling factor from level 0."""

    path: str
    shape: tuple[int, int, int]
    factor: tuple[int, int, int]

    def scale(self, spacing: tuple[float, float, float]) -> list[float]:
        return [s * f for s, f in zip(spacing, self.factor, strict=True)]

    def translation(self, spacing: tuple[float, float, float]) -> list[float]:
        # block-mean downsampling: a level voxel's centre is the centre of the block it averages
        return [(f - 1) * s / 2 for s, f in zip(spacing, self.factor, strict=True)]


def pyramid(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> list[Level]:
    """Levels from full resolution down to a thumbnail-sized one.

    In-plane sides halve at each level; z halves too once the voxels are no longer much thicker
    than they are wide, so that coarse levels stay roughly isotropic for 3-D views.
    """
    levels = [Level("0", shape, (1, 1, 1))]
    fz, fy, fx = 1, 1, 1
    while max(levels[-1].shape[1:]) > THUMBNAIL_SIZE and len(levels) < MAX_LEVELS:
        nz = levels[-1].shape[0]
        fy, fx = fy * 2, fx * 2
        in_plane = min(spacing[1] * fy, spacing[2] * fx)
        if nz > 1 and spacing[0] * fz * 2 <= in_plane * 1.5 and fz * 2 <= SLAB_DEPTH:
            fz *= 2
        levels.append(
            Level(
                str(len(levels)),
                (math.ceil(shape[0] / fz), math.ceil(shape[1] / fy), math.ceil(shape[2] / fx)),
                (fz, fy, fx),
            )
        )
    return levels


def create_level_array(
    group: zarr.Group,
    level: Level,
    dtype: Any,
    *,
    timepoints: int | None = None,
    channels: int | None = None,
    encryption: Any = None,
) -> zarr.Array:
    """Create a level's sharded array: one shard per slab, inner chunks for viewers.

    A 4-D volume (``timepoints`` given) gets a leading ``t`` axis with one time point per
    chunk and shard, so a slab of one volume is written and read without touching the others.
    A colour volume (``channels`` given) gets a ``c`` axis (after ``t``) whose channels all
    share every chunk: a slice's R, G and B come together in one read.
    ``encryption`` (an :class:`~voxelhub.store.encryption.Aes256GcmCodec`) runs after Blosc on
    every inner chunk of an encrypted project.
    """
    shard_z = max(1, min(level.shape[0], SLAB_DEPTH // level.factor[0]))
    chunk = (
        min(INNER_CHUNK[0], shard_z),
        min(INNER_CHUNK[1], level.shape[1]),
        min(INNER_CHUNK[2], level.shape[2]),
    )
    shard_z = math.ceil(shard_z / chunk[0]) * chunk[0]
    shard = (
        shard_z,
        math.ceil(level.shape[1] / chunk[1]) * chunk[1],
        math.ceil(level.shape[2] / chunk[2]) * chunk[2],
    )
    shape: tuple[int, ...] = level.shape
    names: tuple[str, ...] = DIMENSION_NAMES
    if channels is not None:
        shape, chunk, shard = (channels, *shape), (channels, *chunk), (channels, *shard)  # type: ignore[assignment]
        names = ("c", *names)
    if timepoints is not None:
        shape, chunk, shard = (timepoints, *shape), (1, *chunk), (1, *shard)  # type: ignore[assignment]
        names = ("t", *names)
    return group.create_array(
        level.path,
        shape=shape,
        dtype=dtype,
        chunks=chunk,
        shards=shard,
        compressors=[compressor()] if encryption is None else [compressor(), encryption],
        fill_value=0,
        dimension_names=names,
    )


def write_metadata(
    group: zarr.Group,
    levels: list[Level],
    spacing: tuple[float, float, float],
    name: str,
    *,
    time_step: float | None = None,
    channels: tuple[str, ...] | None = None,
    channel_max: float = 255.0,
) -> None:
    """Write the NGFF 0.5 ``ome`` attribute (multiscales) for ``levels``.

    ``time_step`` (seconds, e.g. the repetition time; 1.0 when unknown) makes the image 4-D
    with a leading axis ``t`` of type time.  ``channels`` (labels, e.g. R, G, B) adds the axis
    ``c`` of type channel (never downsampled: scale 1) and an ``omero`` block naming and
    colouring each channel, which NGFF viewers use to show the image in colour.
    """
    lead_scale: list[float] = [] if time_step is None else [time_step]
    lead_shift: list[float] = [] if time_step is None else [0.0]
    if channels is not None:
        lead_scale, lead_shift = [*lead_scale, 1.0], [*lead_shift, 0.0]
    datasets: list[dict[str, Any]] = [
        {
            "path": lv.path,
            "coordinateTransformations": [
                {"type": "scale", "scale": lead_scale + lv.scale(spacing)},
                {"type": "translation", "translation": lead_shift + lv.translation(spacing)},
            ],
        }
        for lv in levels
    ]
    axes = ([] if time_step is None else [TIME_AXIS]) + ([] if channels is None else [CHANNEL_AXIS])
    ome: dict[str, Any] = {
        "version": NGFF_VERSION,
        "multiscales": [{"name": name, "axes": [*axes, *AXES], "datasets": datasets}],
    }
    if channels is not None:
        ome["omero"] = _omero(channels, channel_max)
    group.attrs["ome"] = ome


def _omero(channels: tuple[str, ...], maximum: float) -> dict[str, Any]:
    """The transitional ``omero`` rendering block: each channel's label, colour and window."""
    from voxelhub.dicom.colour import CHANNEL_COLOURS

    window = {"min": 0.0, "max": maximum, "start": 0.0, "end": maximum}
    return {
        "channels": [
            {"label": label, "color": colour, "active": True, "window": dict(window)}
            for label, colour in zip(channels, CHANNEL_COLOURS, strict=False)
        ],
        "rdefs": {"model": "color"},
    }


def read_levels(group: zarr.Group) -> list[dict[str, Any]]:
    """The multiscales datasets of an OME-Zarr group (path and transformations per level)."""
    ome: dict[str, Any] = dict(group.attrs.get("ome") or {})  # type: ignore[arg-type]
    multiscales: list[dict[str, Any]] = list(ome.get("multiscales") or [])
    if not multiscales:
        raise ValueError("not an OME-Zarr image: no ome.multiscales attribute")
    datasets: list[dict[str, Any]] = multiscales[0]["datasets"]
    return datasets


def _halve(block: np.ndarray, axis: int) -> np.ndarray:
    """Mean of neighbouring pairs along one axis (an odd last element is paired with itself)."""
    n = block.shape[axis]
    lead = (slice(None),) * axis
    even = block[(*lead, slice(0, n, 2))]
    odd = block[(*lead, slice(1, n, 2))]
    if n % 2:
        odd = np.concatenate([odd, block[(*lead, slice(n - 1, n))]], axis=axis)
    out: np.ndarray = np.add(even, odd, dtype=np.float32)
    out *= np.float32(0.5)
    return out


def downsample(block: np.ndarray, factor: tuple[int, int, int]) -> np.ndarray:
    """Downsample by powers of two with repeated pairwise means (float32), same dtype out.

    Each halving averages neighbouring pairs, so a factor of 2^k is a block mean whenever the
    sides divide evenly (edges are padded by repetition).  Integer data is rounded.  Levels are
    faithful previews for viewers, not a resampling to measure on.
    """
    if factor == (1, 1, 1):
        return block
    out = block
    for axis in (2, 1, 0):  # in-plane first: the data shrinks 4× before z is touched
        f = factor[axis]
        if f & (f - 1):
            raise ValueError(f"downsampling factors must be powers of two, got {factor}")
        while f > 1:
            out = _halve(out, axis)
            f //= 2
    if block.dtype.kind in "iu":
        return np.rint(out).astype(block.dtype)
    return out.astype(block.dtype)


def label_indices(n: int, factor: int, size: int) -> np.ndarray:
    """Level-0 indices along one axis of the voxels a coarser label level shows.

    Labels are not averaged: a level voxel takes the label at the centre of the block of
    ``factor`` level-0 voxels it covers (the voxel just past the centre for an even factor),
    the last block clamped to the volume, so the result has the image level's ``size``.
    """
    return np.minimum(np.arange(size) * factor + factor // 2, max(0, n - 1))


def sample_labels(labels: Any, factor: tuple[int, ...], shape: tuple[int, ...]) -> Any:
    """Labels on a coarser level's grid (``shape``, ``factor`` per axis), by :func:`label_indices`.

    The rule for label images that have no stored level of their own (written before label
    pyramids); numpy and dask arrays alike, lazily for dask.
    """
    out = labels
    for axis, (f, size) in enumerate(zip(factor, shape, strict=True)):
        if f == 1 and int(out.shape[axis]) == size:
            continue
        index = label_indices(int(labels.shape[axis]), int(f), int(size))
        out = out[(slice(None),) * axis + (index,)]
    return out
