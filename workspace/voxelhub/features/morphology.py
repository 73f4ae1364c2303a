"""Morphological features (IBSI 3.1) from a marching-cubes mesh and the voxel masks."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy import fft as sfft
from scipy import spatial
from scipy.special import eval_legendre
from skimage import measure

__all__ = ["features", "mesh"]

Array = NDArray[np.float64]


def mesh(
    mask: NDArray[np.bool_], spacing: tuple[float, float, float]
) -> tuple[Array, NDArray[np.int64]]:
    """Vertices (mm, z y x) and triangles of the ROI surface at the 0.5 level."""
    padded = np.pad(mask.astype(np.float32), 1)
    verts, faces, _, _ = measure.marching_cubes(padded, level=0.5, spacing=spacing)
    return verts.astype(np.float64), faces.astype(np.int64)


def _ellipsoid_area(a: float, b: float, c: float) -> float:
    """Surface of an ellipsoid with semi-axes a >= b >= c (IBSI Legendre series, 20 terms)."""
    alpha = math.sqrt(max(0.0, 1.0 - b**2 / a**2))
    beta = math.sqrt(max(0.0, 1.0 - c**2 / a**2))
    if alpha * beta == 0.0:
        return 4.0 * math.pi * a * b  # degenerate; the series' argument is undefined
    x = (alpha**2 + beta**2) / (2.0 * alpha * beta)
    nu = np.arange(21)
    series = ((alpha * beta) ** nu / (1.0 - 4.0 * nu**2) * eval_legendre(nu, x)).sum()
    return float(4.0 * math.pi * a * b * series)


def _spatial_autocorrelation(
    image: Array, mask: NDArray[np.bool_], spacing: tuple[float, float, float]
) -> tuple[float, float]:
    """Moran's I and Geary's C with inverse-distance weights, exactly, by FFT convolution.

    On a regular grid the weight of a voxel pair depends only on their offset, so every
    pairwise sum is a correlation with the kernel 1/|offset| (0 at the centre): O(n log n)
    instead of the O(N^2) loop over voxel pairs.
    """
    sl = tuple(slice(int(np.min(ix)), int(np.max(ix)) + 1) for ix in np.nonzero(mask))
    m = mask[sl].astype(np.float64)
    x = np.where(mask[sl], image[sl], 0.0)
    n = m.sum()
    mean = x.sum() / n
    y = (x - mean) * m
    # Circular convolution of length >= 2k - 1 per axis sees every offset in [-(k-1), k-1]
    # exactly once, so no padding to 3k is needed: the kernel is laid out by circular offset.
    shape = [sfft.next_fast_len(2 * k - 1, real=True) for k in m.shape]
    offsets = [
        np.minimum(np.arange(L), L - np.arange(L)) * s for L, s in zip(shape, spacing, strict=True)
    ]
    grids = np.meshgrid(*offsets, indexing="ij", sparse=True)
    dist = np.sqrt(grids[0] ** 2 + grids[1] ** 2 + grids[2] ** 2)
    kernel = np.divide(1.0, dist, out=np.zeros_like(dist), where=dist > 0)
    k_hat = sfft.rfftn(kernel)
    crop = tuple(slice(0, k) for k in m.shape)

    def conv(a: Array) -> Array:
        return np.asarray(sfft.irfftn(sfft.rfftn(a, shape) * k_hat, shape)[crop])

    w_row = conv(m)  # sum of weights from each voxel to all ROI voxels
    wy = conv(y)
    w_total = float((m * w_row).sum())
    yy = float((y * wy).sum())
    ss = float((y**2).sum())
    moran = n / w_total * yy / ss
    geary_num = 2.0 * float((y**2 * w_row).sum()) - 2.0 * yy
    geary = (n - 1.0) / (2.0 * w_total) * geary_num / ss
    return moran, geary


def features(
    image: Array,
    morph_mask: NDArray[np.bool_],
    int_mask: NDArray[np.bool_],
    spacing: tuple[float, float, float],
    *,
    pca_ddof: int = 1,
) -> dict[str, float]:
    """Morphological features keyed by IBSI tag.

    ``morph_mask`` gives the shape; ``int_mask`` (after re-segmentation) the intensities for
    the integrated intensity, centre-of-mass shift, Moran's I and Geary's C. ``pca_ddof`` is
    1 for the IBSI 1/(N - 1) covariance of the voxel positions, 0 for pyradiomics' 1/N.
    """
    verts, faces = mesh(morph_mask, spacing)
    tri = verts[faces]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area = float(0.5 * np.linalg.norm(cross, axis=1).sum())
    volume = float(abs((tri[:, 0] * np.cross(tri[:, 1], tri[:, 2])).sum()) / 6.0)
    voxel_volume = float(np.prod(spacing))
    n_voxels = int(morph_mask.sum())

    pos = np.argwhere(morph_mask) * np.asarray(spacing)
    eig = np.sort(np.linalg.eigvalsh(np.cov(pos, rowvar=False, ddof=pca_ddof)))[::-1]
    lam_major, lam_minor, lam_least = (float(max(e, 0.0)) for e in eig)

    hull = spatial.ConvexHull(verts)
    hv = verts[hull.vertices]
    diam = float(spatial.distance.pdist(hv).max()) if hv.shape[0] > 1 else 0.0
    extent = verts.max(axis=0) - verts.min(axis=0)

    a, b, c = (2.0 * math.sqrt(v) for v in (lam_major, lam_minor, lam_least))

    ipos = np.argwhere(int_mask) * np.asarray(spacing)
    ivals = image[int_mask]
    com = float(np.linalg.norm(pos.mean(axis=0) - (ivals[:, None] * ipos).sum(0) / ivals.sum()))
    moran, geary = _spatial_autocorrelation(image, int_mask, spacing)

    sph = (36.0 * math.pi * volume**2) ** (1.0 / 3.0)
    return {
        "morph_volume": volume,
        "morph_vol_approx": n_voxels * voxel_volume,
        "morph_area_mesh": area,
        "morph_av": area / volume,
        "morph_comp_1": volume / (math.pi**0.5 * area**1.5),
        "morph_comp_2": 36.0 * math.pi * volume**2 / area**3,
        "morph_sph_dispr": area / sph,
        "morph_sphericity": sph / area,
        "morph_asphericity": area / sph - 1.0,
        "morph_com": com,
        "morph_diam": diam,
        "morph_pca_maj_axis": 4.0 * math.sqrt(lam_major),
        "morph_pca_min_axis": 4.0 * math.sqrt(lam_minor),
        "morph_pca_least_axis": 4.0 * math.sqrt(lam_least),
        "morph_pca_elongation": math.sqrt(lam_minor / lam_major),
        "morph_pca_flatness": math.sqrt(lam_least / lam_major),
        "morph_vol_dens_aabb": volume / float(np.prod(extent)),
        "morph_area_dens_aabb": area
        / float(2.0 * (extent[0] * extent[1] + extent[1] * extent[2] + extent[0] * extent[2])),
        "morph_vol_dens_aee": volume / (4.0 * math.pi * a * b * c / 3.0),
        "morph_area_dens_aee": area / _ellipsoid_area(a, b, c),
        "morph_vol_dens_conv_hull": volume / float(hull.volume),
        "morph_area_dens_conv_hull": area / float(hull.area),
        "morph_integ_int": volume * float(ivals.mean()),
        "morph_moran_i": moran,
        "morph_geary_c": geary,
    }
