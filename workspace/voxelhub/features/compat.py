"""``compat="pyradiomics"``: pyradiomics' feature names and its known deviations from IBSI.

Published radiomics studies mostly used pyradiomics; to compare with them, VoxelHub can
reproduce what pyradiomics 3.1 computes instead of the IBSI definition where the two differ
(``../shared/notes/radiomics.md``, section 4, checked on the IBSI digital phantom):

* ``Kurtosis`` is the plain fourth standardised moment (IBSI: excess kurtosis, 3 less).
* PCA axis lengths use the 1/N covariance of the voxel positions (IBSI: 1/(N - 1)).
* Fixed-bin-size edges lie at multiples of the bin width (IBSI: from the re-segmentation
  lower bound, else the ROI minimum).
* Resampling keeps the outer corner of the grid (SimpleITK), does not round intensities, and
  interpolates the mask with nearest neighbour.
* GLCM and GLRLM features are averaged over the 13 directions (IBSI ``3D_avg``); zone
  families are 3D.

Names follow pyradiomics' output keys, ``original_<class>_<Feature>``. Features pyradiomics
does not compute are left out of the table; the ``ibsi_tag`` column still names the IBSI
feature each value corresponds to.
"""

from __future__ import annotations

import math

__all__ = ["PYRADIOMICS_NAMES", "bin_lower_bound", "pyradiomics_name"]

PYRADIOMICS_NAMES: dict[str, str] = {
    "stat_mean": "firstorder_Mean",
    "stat_var": "firstorder_Variance",
    "stat_skew": "firstorder_Skewness",
    "stat_kurt": "firstorder_Kurtosis",
    "stat_median": "firstorder_Median",
    "stat_min": "firstorder_Minimum",
    "stat_p10": "firstorder_10Percentile",
    "stat_p90": "firstorder_90Percentile",
    "stat_max": "firstorder_Maximum",
    "stat_iqr": "firstorder_InterquartileRange",
    "stat_range": "firstorder_Range",
    "stat_mad": "firstorder_MeanAbsoluteDeviation",
    "stat_rmad": "firstorder_RobustMeanAbsoluteDeviation",
    "stat_energy": "firstorder_Energy",
    "stat_rms": "firstorder_RootMeanSquared",
    "ih_entropy": "firstorder_Entropy",
    "ih_uniformity": "firstorder_Uniformity",
    "morph_volume": "shape_MeshVolume",
    "morph_vol_approx": "shape_VoxelVolume",
    "morph_area_mesh": "shape_SurfaceArea",
    "morph_av": "shape_SurfaceVolumeRatio",
    "morph_sphericity": "shape_Sphericity",
    "morph_diam": "shape_Maximum3DDiameter",
    "morph_pca_maj_axis": "shape_MajorAxisLength",
    "morph_pca_min_axis": "shape_MinorAxisLength",
    "morph_pca_least_axis": "shape_LeastAxisLength",
    "morph_pca_elongation": "shape_Elongation",
    "morph_pca_flatness": "shape_Flatness",
    "cm_joint_avg_3D_avg": "glcm_JointAverage",
    "cm_clust_prom_3D_avg": "glcm_ClusterProminence",
    "cm_clust_shade_3D_avg": "glcm_ClusterShade",
    "cm_clust_tend_3D_avg": "glcm_ClusterTendency",
    "cm_contrast_3D_avg": "glcm_Contrast",
    "cm_corr_3D_avg": "glcm_Correlation",
    "cm_diff_avg_3D_avg": "glcm_DifferenceAverage",
    "cm_diff_entr_3D_avg": "glcm_DifferenceEntropy",
    "cm_diff_var_3D_avg": "glcm_DifferenceVariance",
    "cm_energy_3D_avg": "glcm_JointEnergy",
    "cm_joint_entr_3D_avg": "glcm_JointEntropy",
    "cm_info_corr1_3D_avg": "glcm_Imc1",
    "cm_info_corr2_3D_avg": "glcm_Imc2",
    "cm_inv_diff_mom_3D_avg": "glcm_Idm",
    "cm_inv_diff_mom_norm_3D_avg": "glcm_Idmn",
    "cm_inv_diff_3D_avg": "glcm_Id",
    "cm_inv_diff_norm_3D_avg": "glcm_Idn",
    "cm_inv_var_3D_avg": "glcm_InverseVariance",
    "cm_joint_max_3D_avg": "glcm_MaximumProbability",
    "cm_sum_entr_3D_avg": "glcm_SumEntropy",
    "cm_joint_var_3D_avg": "glcm_SumSquares",
    "cm_auto_corr_3D_avg": "glcm_Autocorrelation",
    "rlm_sre_3D_avg": "glrlm_ShortRunEmphasis",
    "rlm_lre_3D_avg": "glrlm_LongRunEmphasis",
    "rlm_glnu_3D_avg": "glrlm_GrayLevelNonUniformity",
    "rlm_glnu_norm_3D_avg": "glrlm_GrayLevelNonUniformityNormalized",
    "rlm_rlnu_3D_avg": "glrlm_RunLengthNonUniformity",
    "rlm_rlnu_norm_3D_avg": "glrlm_RunLengthNonUniformityNormalized",
    "rlm_r_perc_3D_avg": "glrlm_RunPercentage",
    "rlm_gl_var_3D_avg": "glrlm_GrayLevelVariance",
    "rlm_rl_var_3D_avg": "glrlm_RunVariance",
    "rlm_rl_entr_3D_avg": "glrlm_RunEntropy",
    "rlm_lgre_3D_avg": "glrlm_LowGrayLevelRunEmphasis",
    "rlm_hgre_3D_avg": "glrlm_HighGrayLevelRunEmphasis",
    "rlm_srlge_3D_avg": "glrlm_ShortRunLowGrayLevelEmphasis",
    "rlm_srhge_3D_avg": "glrlm_ShortRunHighGrayLevelEmphasis",
    "rlm_lrlge_3D_avg": "glrlm_LongRunLowGrayLevelEmphasis",
    "rlm_lrhge_3D_avg": "glrlm_LongRunHighGrayLevelEmphasis",
    "szm_sze_3D": "glszm_SmallAreaEmphasis",
    "szm_lze_3D": "glszm_LargeAreaEmphasis",
    "szm_glnu_3D": "glszm_GrayLevelNonUniformity",
    "szm_glnu_norm_3D": "glszm_GrayLevelNonUniformityNormalized",
    "szm_zsnu_3D": "glszm_SizeZoneNonUniformity",
    "szm_zsnu_norm_3D": "glszm_SizeZoneNonUniformityNormalized",
    "szm_z_perc_3D": "glszm_ZonePercentage",
    "szm_gl_var_3D": "glszm_GrayLevelVariance",
    "szm_zs_var_3D": "glszm_ZoneVariance",
    "szm_zs_entr_3D": "glszm_ZoneEntropy",
    "szm_lgze_3D": "glszm_LowGrayLevelZoneEmphasis",
    "szm_hgze_3D": "glszm_HighGrayLevelZoneEmphasis",
    "szm_szlge_3D": "glszm_SmallAreaLowGrayLevelEmphasis",
    "szm_szhge_3D": "glszm_SmallAreaHighGrayLevelEmphasis",
    "szm_lzlge_3D": "glszm_LargeAreaLowGrayLevelEmphasis",
    "szm_lzhge_3D": "glszm_LargeAreaHighGrayLevelEmphasis",
    "ngt_coarseness_3D": "ngtdm_Coarseness",
    "ngt_contrast_3D": "ngtdm_Contrast",
    "ngt_busyness_3D": "ngtdm_Busyness",
    "ngt_complexity_3D": "ngtdm_Complexity",
    "ngt_strength_3D": "ngtdm_Strength",
    "ngl_lde_3D": "gldm_SmallDependenceEmphasis",
    "ngl_hde_3D": "gldm_LargeDependenceEmphasis",
    "ngl_lgce_3D": "gldm_LowGrayLevelEmphasis",
    "ngl_hgce_3D": "gldm_HighGrayLevelEmphasis",
    "ngl_ldlge_3D": "gldm_SmallDependenceLowGrayLevelEmphasis",
    "ngl_ldhge_3D": "gldm_SmallDependenceHighGrayLevelEmphasis",
    "ngl_hdlge_3D": "gldm_LargeDependenceLowGrayLevelEmphasis",
    "ngl_hdhge_3D": "gldm_LargeDependenceHighGrayLevelEmphasis",
    "ngl_glnu_3D": "gldm_GrayLevelNonUniformity",
    "ngl_dcnu_3D": "gldm_DependenceNonUniformity",
    "ngl_dcnu_norm_3D": "gldm_DependenceNonUniformityNormalized",
    "ngl_gl_var_3D": "gldm_GrayLevelVariance",
    "ngl_dc_var_3D": "gldm_DependenceVariance",
    "ngl_dc_entr_3D": "gldm_DependenceEntropy",
}
"""IBSI tag -> pyradiomics ``<class>_<Feature>``, as matched on the IBSI digital phantom."""


def pyradiomics_name(tag: str, image_type: str = "original") -> str | None:
    """pyradiomics' output key for an IBSI tag, ``None`` where pyradiomics has no equivalent."""
    name = PYRADIOMICS_NAMES.get(tag)
    return None if name is None else f"{image_type}_{name}"


def bin_lower_bound(minimum: float, width: float) -> float:
    """pyradiomics' first fixed-bin-size edge: the multiple of ``width`` at or below the ROI
    minimum (``minimum - minimum % width`` in its code)."""
    return math.floor(minimum / width) * width
