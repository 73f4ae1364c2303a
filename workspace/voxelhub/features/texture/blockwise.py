"""Texture matrices of a large ROI from its chunks: exact, in a dask tree reduction.

A whole-liver or whole-lung ROI (10^7 voxels and more) need not be one in-memory block. Each
chunk is read with a one-voxel halo (zeros beyond the image, like "outside the ROI"), and
computes what it owns:

* GLCM, NGTDM and NGLDM: every voxel pair or neighbourhood is counted by the chunk that owns
  its first voxel, so pairs across a chunk border count exactly once; the per-chunk partial
  matrices add up to the single-block matrix.
* GLRLM: runs that lie inside a chunk are counted there; a run cut by a chunk border leaves
  its true start in one chunk and its true end in another (the halo tells which voxels are
  true starts and ends). On each line starts and ends alternate, so sorting them by line and
  position pairs them up again, and only these O(surface) end points travel.
* GLSZM and GLDZM: zones are labelled per chunk; zones that touch no inner chunk face are
  final and counted in the chunk. The rest are merged globally by union-find over the label
  planes on both sides of every inner chunk face (with the family's 26- or 8-connectivity,
  diagonals included), then counted.

Every partial result holds integer counts (NGTDM's differences are kept as integer sums per
neighbour count and divided only at the end), so the sum does not depend on the order of the
reduction: the chunked matrices equal the single-block ones exactly, for any chunking.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.sparse import csgraph

from voxelhub.features.texture import glcm, gldzm, glrlm, glszm, ngldm, ngtdm
from voxelhub.features.texture._common import (
    OFFSETS_2D,
    OFFSETS_3D,
    Array,
    aggregate,
    dims,
    zone_aggregate,
)

__all__ = ["features"]

IntArray = NDArray[np.int64]
Offset = tuple[int, int, int]


@dataclass
class _Block:
    """One chunk with a one-voxel halo, where it sits, and the image's shape."""

    ext: IntArray  # (nz + 2, ny + 2, nx + 2), zeros beyond the image
    start: tuple[int, int, int]  # global index of the first core voxel
    index: tuple[int, int, int]  # the chunk's position in the chunk grid
    grid: tuple[int, int, int]  # chunks per axis
    shape: tuple[int, int, int]  # the whole image

    @property
    def core(self) -> IntArray:
        return self.ext[1:-1, 1:-1, 1:-1]


def _blocks(grey: da.Array) -> list[Any]:
    """Delayed :class:`_Block` objects, one per chunk."""
    ext = da.overlap.overlap(grey, depth=1, boundary=0)
    delayed = ext.to_delayed()
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]).astype(int) for c in grey.chunks]
    grid = tuple(len(c) for c in grey.chunks)
    shape = tuple(int(s) for s in grey.shape)
    out = []
    for idx in np.ndindex(*grid):
        start = tuple(int(starts[k][idx[k]]) for k in range(3))
        out.append(dask.delayed(_Block)(delayed[idx], start, idx, grid, shape))
    return out


def _pad_add(a: Array, b: Array) -> Array:
    """Sum of two count arrays whose last axis may differ in length."""
    n = max(a.shape[-1], b.shape[-1])
    out = np.zeros((*a.shape[:-1], n), dtype=a.dtype)
    out[..., : a.shape[-1]] += a
    out[..., : b.shape[-1]] += b
    return out


def _combine(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Merge two partial results: add arrays, concatenate lists."""
    out: dict[str, Any] = {}
    for key in a.keys() | b.keys():
        if key not in a or key not in b:
            out[key] = a.get(key, b.get(key))
        elif isinstance(a[key], list):
            out[key] = a[key] + b[key]
        else:
            out[key] = _pad_add(a[key], b[key])
    return out


def _tree_sum(parts: list[Any], fan_in: int = 8) -> Any:
    """Reduce delayed partial results in a tree, ``fan_in`` at a time."""
    combine = dask.delayed(_combine_many, pure=True)
    while len(parts) > 1:
        parts = [combine(parts[i : i + fan_in]) for i in range(0, len(parts), fan_in)]
    return parts[0]


def _combine_many(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    out = parts[0]
    for p in parts[1:]:
        out = _combine(out, p)
    return out


def _run(grey: da.Array, block_func: Any, *args: Any) -> dict[str, Any]:
    parts = [dask.delayed(block_func, pure=True)(b, *args) for b in _blocks(grey)]
    (result,) = dask.compute(_tree_sum(parts))
    return dict(result)


# -- GLCM -----------------------------------------------------------------------------------
def _glcm_block(
    b: _Block, n_levels: int, offsets: Sequence[Offset], per_slice: bool
) -> dict[str, Any]:
    core = b.core
    nz, ny, nx = core.shape
    n_slices = b.shape[0] if per_slice else 1
    out = np.zeros((len(offsets), n_slices, n_levels, n_levels), dtype=np.float64)
    for k, (dz, dy, dx) in enumerate(offsets):
        nb = b.ext[1 + dz : 1 + dz + nz, 1 + dy : 1 + dy + ny, 1 + dx : 1 + dx + nx]
        ok = (core > 0) & (nb > 0)
        idx = (core[ok] - 1) * n_levels + (nb[ok] - 1)
        if per_slice:
            z = np.broadcast_to((np.arange(nz) + b.start[0])[:, None, None], core.shape)[ok]
            idx = idx + z * n_levels * n_levels
        counts = np.bincount(idx, minlength=n_slices * n_levels * n_levels).astype(np.float64)
        counts = counts.reshape(n_slices, n_levels, n_levels)
        out[k] = counts + counts.transpose(0, 2, 1)
    return {"m": out}


# -- GLRLM ----------------------------------------------------------------------------------
def _line_keys(gpos: Sequence[IntArray], d: Offset, shape: tuple[int, int, int]) -> IntArray:
    """A global key per line along ``d`` (as :func:`glrlm._runs` builds it)."""
    axis = int(np.flatnonzero(d)[0])
    t = gpos[axis] * d[axis]
    width = 3 * max(shape)
    key = np.zeros(t.shape, dtype=np.int64)
    for k in range(3):
        key = key * width + (gpos[k] - t * d[k] + width // 3)
    return key


def _glrlm_block(
    b: _Block, n_levels: int, offsets: Sequence[Offset], per_slice: bool
) -> dict[str, Any]:
    core = b.core
    pos = np.nonzero(core)
    levels = core[pos]
    n_slices = b.shape[0] if per_slice else 1
    mats: list[Array] = []
    starts: list[IntArray] = []
    ends: list[IntArray] = []
    for k, d in enumerate(offsets):
        prev = b.ext[pos[0] + 1 - d[0], pos[1] + 1 - d[1], pos[2] + 1 - d[2]]
        nxt = b.ext[pos[0] + 1 + d[0], pos[1] + 1 + d[1], pos[2] + 1 + d[2]]
        gpos = [p + s for p, s in zip(pos, b.start, strict=True)]
        axis = int(np.flatnonzero(d)[0])
        t = gpos[axis] * d[axis]
        key = _line_keys(gpos, d, b.shape)
        order = np.lexsort((t, key))
        key_o, t_o, lev_o, z_o = key[order], t[order], levels[order], gpos[0][order]
        true_start, true_end = (prev != levels)[order], (nxt != levels)[order]
        new_run = np.ones(lev_o.shape, dtype=bool)
        new_run[1:] = (key_o[1:] != key_o[:-1]) | (t_o[1:] != t_o[:-1] + 1)
        new_run[1:] |= lev_o[1:] != lev_o[:-1]
        first = np.flatnonzero(new_run)
        last = np.append(first[1:] - 1, lev_o.size - 1)[: first.size].astype(np.int64)
        s_ok, e_ok = true_start[first], true_end[last]
        whole = s_ok & e_ok
        length = last[whole] - first[whole] + 1
        width = int(length.max()) if length.size else 1
        m = np.zeros((n_slices, n_levels, width), dtype=np.float64)
        zz = z_o[first[whole]] if per_slice else np.zeros(length.size, dtype=np.int64)
        np.add.at(m, (zz, lev_o[first[whole]] - 1, length - 1), 1.0)
        mats.append(m)
        so = first[s_ok & ~e_ok]
        eo = last[e_ok & ~s_ok]
        direction = np.full(so.size, k, dtype=np.int64)
        starts.append(np.stack([direction, key_o[so], t_o[so], lev_o[so], z_o[so]], axis=1))
        ends.append(np.stack([np.full(eo.size, k, dtype=np.int64), key_o[eo], t_o[eo]], axis=1))
    width = max(m.shape[-1] for m in mats)
    stacked = np.stack([_pad_add(m, np.zeros((*m.shape[:-1], width))) for m in mats])
    return {"m": stacked, "starts": starts, "ends": ends}


def _glrlm_matrices(
    grey: da.Array, n_levels: int, offsets: Sequence[Offset], per_slice: bool
) -> tuple[Array, Array]:
    res = _run(grey, _glrlm_block, n_levels, tuple(offsets), per_slice)
    m: Array = res["m"]
    starts = np.concatenate(res["starts"]) if res["starts"] else np.zeros((0, 5), np.int64)
    ends = np.concatenate(res["ends"]) if res["ends"] else np.zeros((0, 3), np.int64)
    s = starts[np.lexsort((starts[:, 2], starts[:, 1], starts[:, 0]))]
    e = ends[np.lexsort((ends[:, 2], ends[:, 1], ends[:, 0]))]
    if s.shape[0] != e.shape[0] or not np.array_equal(s[:, :2], e[:, :2]):
        raise AssertionError("run start and end points do not pair up across chunks")
    length = e[:, 2] - s[:, 2] + 1
    width = max(m.shape[-1], int(length.max()) if length.size else 1)
    m = _pad_add(m, np.zeros((*m.shape[:-1], width)))
    zz = s[:, 4] if per_slice else np.zeros(length.size, dtype=np.int64)
    np.add.at(m, (s[:, 0], zz, s[:, 3] - 1, length - 1), 1.0)
    used = np.flatnonzero(m.reshape(-1, m.shape[-1]).sum(axis=0))
    m = m[..., : (int(used[-1]) + 1 if used.size else 1)]
    return m, _voxels_per_matrix(grey, per_slice, m.shape[:2])


def _voxels_per_matrix(grey: da.Array, per_slice: bool, shape: tuple[int, ...]) -> Array:
    per_z = np.asarray((grey > 0).sum(axis=(1, 2)).compute(), dtype=np.float64)
    n = per_z if per_slice else np.array([per_z.sum()])
    return np.broadcast_to(n, shape).copy()


# -- NGTDM and NGLDM ------------------------------------------------------------------------
def _neighbourhood_block(b: _Block, n_levels: int, planar: bool, kind: str, alpha: int) -> dict:
    n_slices = b.shape[0] if planar else 1
    z0 = b.start[0]
    if kind == "ngtdm":
        counts, absdev = ngtdm.tables(b.ext, n_levels, planar, core=True, z0=z0, nz=n_slices)
        return {"counts": counts, "absdev": absdev}
    return {"m": ngldm.counts(b.ext, n_levels, planar, alpha, core=True, z0=z0, nz=n_slices)}


# -- zones (GLSZM, GLDZM) -------------------------------------------------------------------
@dataclass
class _ZoneRecords:
    """Zones that touch an inner chunk face: global id, level, size, slice, edge distance."""

    ids: list[IntArray] = field(default_factory=list)
    level: list[IntArray] = field(default_factory=list)
    size: list[IntArray] = field(default_factory=list)
    slice: list[IntArray] = field(default_factory=list)
    dist: list[IntArray] = field(default_factory=list)


def _zone_block(b: _Block, dist_block: IntArray | None, n_levels: int, planar: bool) -> dict:
    """Label this chunk's zones; count the final ones, hand on those at inner faces."""
    core = b.core
    z = glszm.zones(core, planar)
    n_slices = b.shape[0] if planar else 1
    slice_global = z.slice + b.start[0]
    if dist_block is not None and z.level.size:
        flat = z.labels.ravel()
        order = np.argsort(flat, kind="stable")
        starts = np.searchsorted(flat[order], np.arange(1, z.level.size + 1))
        zdist = np.minimum.reduceat(dist_block.ravel()[order], starts).astype(np.int64)
    else:
        zdist = np.zeros(z.level.size, dtype=np.int64)
    # zones on a face shared with another chunk may continue there
    at_face = np.zeros(z.level.size + 1, dtype=bool)
    faces: dict[tuple[int, ...], Any] = {}
    block_id = np.ravel_multi_index(b.index, b.grid)
    gid = np.where(z.labels > 0, z.labels + (np.int64(block_id) << 32), 0)
    for axis in range(3):
        if planar and axis == 0:
            continue
        for side, sl in ((0, 0), (1, -1)):
            if (side == 0 and b.index[axis] == 0) or (
                side == 1 and b.index[axis] == b.grid[axis] - 1
            ):
                continue
            plane = np.take(z.labels, sl, axis=axis)
            at_face[plane.ravel()] = True
            faces[(axis, side, *b.index)] = (
                np.take(gid, sl, axis=axis),
                np.take(core, sl, axis=axis),
            )
    at_face[0] = False
    border = at_face[1:]
    inner = ~border
    out: dict[str, Any] = {}
    kinds = [("size", z.size)] + ([("dist", zdist)] if dist_block is not None else [])
    for name, values in kinds:
        v = values[inner]
        m = np.zeros((n_slices, n_levels, int(v.max()) if v.size else 1), dtype=np.float64)
        zz = slice_global[inner] if planar else np.zeros(v.size, dtype=np.int64)
        np.add.at(m, (zz, z.level[inner] - 1, v - 1), 1.0)
        out[name] = m
    ids = np.flatnonzero(border) + 1 + (np.int64(block_id) << 32)
    out["records"] = [(ids, z.level[border], z.size[border], slice_global[border], zdist[border])]
    out["faces"] = [faces]
    return out


def _merge_zones(res: dict[str, Any], grid: tuple[int, int, int], planar: bool) -> dict[str, Any]:
    """Union zones across inner faces; returns the merged zones' level, size, slice, dist."""
    recs = res["records"]
    ids = np.concatenate([r[0] for r in recs])
    level = np.concatenate([r[1] for r in recs])
    size = np.concatenate([r[2] for r in recs])
    zsl = np.concatenate([r[3] for r in recs])
    dist = np.concatenate([r[4] for r in recs])
    faces: dict[tuple[int, ...], Any] = {}
    for f in res["faces"]:
        faces.update(f)
    pairs: list[IntArray] = []
    for axis in range(3):
        if planar and axis == 0:
            continue
        other = [a for a in range(3) if a != axis]
        for i in range(grid[axis] - 1):
            lo = _assemble(faces, axis, 1, i, other, grid)
            hi = _assemble(faces, axis, 0, i + 1, other, grid)
            # in-plane offsets of a neighbour across the face (z stays put for 2D zones)
            steps = [(0,) if planar and a == 0 else (-1, 0, 1) for a in other]
            for da_ in steps[0]:
                for db in steps[1]:
                    a_ids, a_g = _shift(lo, da_, db, 0)
                    b_ids, b_g = _shift(hi, da_, db, 1)
                    ok = (a_g > 0) & (a_g == b_g)
                    pairs.append(np.stack([a_ids[ok], b_ids[ok]], axis=1))
    uniq, inv = np.unique(ids, return_inverse=True)
    edges = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    ea = np.searchsorted(uniq, edges[:, 0])
    eb = np.searchsorted(uniq, edges[:, 1])
    graph = sparse.coo_matrix((np.ones(ea.size), (ea, eb)), shape=(uniq.size, uniq.size))
    _, comp = csgraph.connected_components(graph, directed=False)
    comp = comp[inv]
    n = int(comp.max()) + 1 if comp.size else 0
    merged_size = np.bincount(comp, weights=size, minlength=n).astype(np.int64)
    merged_dist = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(merged_dist, comp, dist)
    merged_level = np.zeros(n, dtype=np.int64)
    merged_level[comp] = level
    merged_slice = np.zeros(n, dtype=np.int64)
    merged_slice[comp] = zsl
    return {"level": merged_level, "size": merged_size, "slice": merged_slice, "dist": merged_dist}


def _assemble(
    faces: dict[tuple[int, ...], Any],
    axis: int,
    side: int,
    i: int,
    other: list[int],
    grid: tuple[int, int, int],
) -> tuple[IntArray, IntArray]:
    """The whole plane of labels and grey levels on one side of an inner face."""
    rows_ids, rows_g = [], []
    for a in range(grid[other[0]]):
        ids_row, g_row = [], []
        for b_ in range(grid[other[1]]):
            idx = [0, 0, 0]
            idx[axis], idx[other[0]], idx[other[1]] = i, a, b_
            ids, g = faces[(axis, side, *idx)]
            ids_row.append(ids)
            g_row.append(g)
        rows_ids.append(np.concatenate(ids_row, axis=1))
        rows_g.append(np.concatenate(g_row, axis=1))
    return np.concatenate(rows_ids, axis=0), np.concatenate(rows_g, axis=0)


def _shift(
    plane: tuple[IntArray, IntArray], da_: int, db: int, which: int
) -> tuple[IntArray, IntArray]:
    """Views of a plane pair offset by (da_, db): side ``which`` 0 takes p, 1 takes p + d."""
    ids, g = plane
    n0, n1 = ids.shape
    s0 = (
        slice(max(0, -da_), n0 - max(0, da_))
        if which == 0
        else slice(max(0, da_), n0 + min(0, da_))
    )
    s1 = slice(max(0, -db), n1 - max(0, db)) if which == 0 else slice(max(0, db), n1 + min(0, db))
    return ids[s0, s1].ravel(), g[s0, s1].ravel()


def _zone_matrices(
    grey: da.Array,
    n_levels: int,
    planar: bool,
    edge: da.Array | None,
) -> dict[str, tuple[Array, Array]]:
    blocks = _blocks(grey)
    dist_blocks: list[Any] = [None] * len(blocks)
    if edge is not None:
        dist_blocks = list(edge.to_delayed().ravel())
    parts = [
        dask.delayed(_zone_block, pure=True)(b, d, n_levels, planar)
        for b, d in zip(blocks, dist_blocks, strict=True)
    ]
    (res,) = dask.compute(_tree_sum(parts))
    grid = tuple(len(c) for c in grey.chunks)
    merged = _merge_zones(res, grid, planar)  # type: ignore[arg-type]
    out = {}
    n_slices = int(grey.shape[0]) if planar else 1
    for name in ("size", "dist"):
        if name not in res:
            continue
        m = res[name]
        v = merged[name]
        width = max(m.shape[-1], int(v.max()) if v.size else 1)
        m = _pad_add(m, np.zeros((n_slices, n_levels, width)))
        zz = merged["slice"] if planar else np.zeros(v.size, dtype=np.int64)
        np.add.at(m, (zz, merged["level"] - 1, v - 1), 1.0)
        used = np.flatnonzero(m.reshape(-1, m.shape[-1]).sum(axis=0))
        m = m[..., : (int(used[-1]) + 1 if used.size else 1)]
        out[name] = (m, _voxels_per_matrix(grey, planar, (n_slices,)))
    return out


# -- the families ---------------------------------------------------------------------------
def features(
    family: str,
    grey: da.Array,
    n_levels: int,
    aggregations: Iterable[str],
    *,
    alpha: int = 0,
    edge_mask: NDArray[np.bool_] | None = None,
) -> dict[str, float]:
    """One texture family of a chunked discretised ROI, equal to the single-block result.

    Parameters
    ----------
    family
        ``glcm``, ``glrlm``, ``glszm``, ``gldzm``, ``ngtdm`` or ``ngldm``.
    grey
        Grey levels 1..Ng, 0 outside the intensity mask, as a dask array; its chunks are the
        units of work.
    n_levels, aggregations, alpha
        As for the family's own ``features``.
    edge_mask
        GLDZM only: the morphological mask that defines the ROI edge. Its distance map is a
        global transform (a distance can span the whole ROI), computed once in memory (one
        byte per voxel in, four out); zones then take their minimum per chunk.
    """
    aggs = list(aggregations)
    want3 = [a for a in aggs if a.startswith("3D")]
    want2 = [a for a in aggs if not a.startswith("3D")]
    out: dict[str, float] = {}
    if family == "glcm":
        for want, offsets, per_slice in ((want3, OFFSETS_3D, False), (want2, OFFSETS_2D, True)):
            if want:
                m = _run(grey, _glcm_block, n_levels, offsets, per_slice)["m"]
                out.update(aggregate(m, np.zeros(m.shape[:2]), want, glcm._features))
    elif family == "glrlm":
        for want, offsets, per_slice in ((want3, OFFSETS_3D, False), (want2, OFFSETS_2D, True)):
            if want:
                m, n = _glrlm_matrices(grey, n_levels, offsets, per_slice)
                out.update(aggregate(m, n, want, glrlm._features))
    elif family in ("ngtdm", "ngldm"):
        for dim in dims(aggs):
            planar = dim != "3D"
            res = _run(grey, _neighbourhood_block, n_levels, planar, family, alpha)
            if family == "ngtdm":
                m, n = ngtdm.from_tables(res["counts"], res["absdev"])
                out.update(zone_aggregate(m, n, dim, ngtdm._features))
            else:
                m = res["m"]
                out.update(zone_aggregate(m, m.sum(axis=(1, 2)), dim, ngldm._features))
    elif family in ("glszm", "gldzm"):
        for dim in dims(aggs):
            planar = dim != "3D"
            edge = None
            if family == "gldzm":
                mask = np.asarray(grey > 0) if edge_mask is None else edge_mask
                dist = gldzm.distance_map(mask, planar)
                edge = da.from_array(dist, chunks=grey.chunks)
            m, n = _zone_matrices(grey, n_levels, planar, edge)[
                "size" if family == "glszm" else "dist"
            ]
            func = glszm._features if family == "glszm" else gldzm._features
            out.update(zone_aggregate(m, n, dim, func))
    else:
        raise ValueError(f"unknown texture family {family!r}")
    return out
