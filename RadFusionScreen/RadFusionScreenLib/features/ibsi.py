"""pyradiomics feature names → IBSI 1 reference-manual tags (``original`` image type only).

IBSI (Zwanenburg et al., Radiology 2020; reference manual arXiv:1612.07003) names each feature
``<family>_<name>[_<aggregation>]``. For the ``original`` image this module maps:

* ``shape`` → ``morph_*`` (3D morphology on the mask, whatever ``force2D`` says);
* ``firstorder`` → ``stat_*`` (raw intensities) and ``ih_entropy`` / ``ih_uniformity``
  (pyradiomics computes these two on the discretised grey levels);
* ``glcm`` / ``glrlm`` → ``cm_*`` / ``rlm_*`` with ``_3D_avg`` (3D: one matrix per direction,
  features averaged over the 13 directions) or ``_2_5D_avg`` (``force2D``: the C extension
  counts the in-plane offsets over *all* slices into one matrix per direction, i.e. slices
  are merged per direction, and the features are averaged over the 4 directions). With
  ``weightingNorm: no_weighting`` the direction matrices are summed first: ``_3D_comb`` /
  ``_2_5D_comb``;
* ``glszm`` / ``gldm`` / ``ngtdm`` → ``szm_*`` / ``ngl_*`` / ``ngt_*`` with ``_3D`` or ``_2_5D``
  (``force2D``: one matrix from in-plane neighbourhoods of all slices). GLDM is IBSI's NGLDM
  only for ``gldm_a: 0`` and distance 1.

Tags need pyradiomics' defaults for the texture settings that IBSI's reference values assume:
``distances: [1]``, ``symmetricalGLCM: true``; Energy and RootMeanSquared need
``voxelArrayShift: 0``. Other settings give ``None`` (not IBSI-comparable).

IBSI's 2D aggregation (features per slice, then averaged) has no pyradiomics counterpart; for
a one-slice image 2D and 2.5D coincide, but the tag stays ``_2_5D``. Filtered image types
(LoG, wavelet, ...) are IBSI 2 territory and are not mapped.

Value conventions that differ (see :data:`MAPPING` notes): pyradiomics ``Kurtosis`` is Pearson's
kurtosis, IBSI ``stat_kurt`` the excess kurtosis (subtract 3). Everything else is the same
definition in the same unit (mm, mm², mm³, log2); checked against the IBSI digital phantom
in ``Testing/Python/test_ibsi.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("morph", "stat", "ih", "cm", "rlm", "szm", "ngl", "ngt")


@dataclass(frozen=True)
class IbsiFeature:
    """IBSI counterpart of one pyradiomics feature (``featureClass_FeatureName``)."""

    family: str  # one of FAMILIES
    tag: str  # IBSI tag without the aggregation suffix, e.g. "cm_joint_max"
    convert: Callable[[float], float] | None = None  # pyradiomics value → IBSI value
    aliases: tuple[str, ...] = ()  # further IBSI tags with the identical definition
    note: str = ""
    requires: Mapping[str, Any] = field(default_factory=dict)  # settings the mapping needs


def _minus_three(value: float) -> float:
    return value - 3.0


def _family(family: str, pairs: dict[str, str]) -> dict[str, IbsiFeature]:
    return {name: IbsiFeature(family, tag) for name, tag in pairs.items()}


_MORPH = _family(
    "morph",
    {
        "shape_MeshVolume": "morph_volume",
        "shape_VoxelVolume": "morph_vol_approx",
        "shape_SurfaceArea": "morph_area_mesh",
        "shape_SurfaceVolumeRatio": "morph_av",
        "shape_Compactness1": "morph_comp_1",
        "shape_Compactness2": "morph_comp_2",
        "shape_SphericalDisproportion": "morph_sph_dispr",
        "shape_Sphericity": "morph_sphericity",
        "shape_Maximum3DDiameter": "morph_diam",
        "shape_MajorAxisLength": "morph_pca_maj_axis",
        "shape_MinorAxisLength": "morph_pca_min_axis",
        "shape_LeastAxisLength": "morph_pca_least_axis",
        # Both define elongation / flatness as sqrt(lambda_minor / lambda_major) and
        # sqrt(lambda_least / lambda_major): no conversion.
        "shape_Elongation": "morph_pca_elongation",
        "shape_Flatness": "morph_pca_flatness",
    },
)

_STAT = _family(
    "stat",
    {
        "firstorder_Mean": "stat_mean",
        "firstorder_Variance": "stat_var",
        "firstorder_Skewness": "stat_skew",
        "firstorder_Median": "stat_median",
        "firstorder_Minimum": "stat_min",
        "firstorder_10Percentile": "stat_p10",
        "firstorder_90Percentile": "stat_p90",
        "firstorder_Maximum": "stat_max",
        "firstorder_InterquartileRange": "stat_iqr",
        "firstorder_Range": "stat_range",
        "firstorder_MeanAbsoluteDeviation": "stat_mad",
        "firstorder_RobustMeanAbsoluteDeviation": "stat_rmad",
    },
)
_STAT["firstorder_Kurtosis"] = IbsiFeature(
    "stat", "stat_kurt", _minus_three, note="pyradiomics reports Pearson kurtosis; IBSI excess kurtosis = value - 3"
)
_SHIFT_NOTE = "computed on x + voxelArrayShift; IBSI only when the shift is 0"
_STAT["firstorder_Energy"] = IbsiFeature("stat", "stat_energy", note=_SHIFT_NOTE, requires={"voxelArrayShift": 0})
_STAT["firstorder_RootMeanSquared"] = IbsiFeature("stat", "stat_rms", note=_SHIFT_NOTE, requires={"voxelArrayShift": 0})

_IH = {
    "firstorder_Entropy": IbsiFeature("ih", "ih_entropy", note="log2, on discretised grey levels"),
    # sum p_i^2 over grey levels equals NGLDM's normalised grey level non-uniformity (every
    # voxel is one NGLDM entry), which pyradiomics therefore deprecated in GLDM.
    "firstorder_Uniformity": IbsiFeature(
        "ih", "ih_uniformity", aliases=("ngl_glnu_norm",), note="on discretised grey levels"
    ),
}

_CM = _family(
    "cm",
    {
        "glcm_MaximumProbability": "cm_joint_max",
        "glcm_JointAverage": "cm_joint_avg",
        "glcm_SumSquares": "cm_joint_var",
        "glcm_JointEntropy": "cm_joint_entr",
        "glcm_DifferenceVariance": "cm_diff_var",
        "glcm_DifferenceEntropy": "cm_diff_entr",
        "glcm_SumAverage": "cm_sum_avg",
        "glcm_SumEntropy": "cm_sum_entr",
        "glcm_JointEnergy": "cm_energy",
        "glcm_Contrast": "cm_contrast",
        "glcm_Id": "cm_inv_diff",
        "glcm_Idn": "cm_inv_diff_norm",
        "glcm_Idm": "cm_inv_diff_mom",
        "glcm_Idmn": "cm_inv_diff_mom_norm",
        "glcm_InverseVariance": "cm_inv_var",
        "glcm_Correlation": "cm_corr",
        "glcm_Autocorrelation": "cm_auto_corr",
        "glcm_ClusterShade": "cm_clust_shade",
        "glcm_ClusterProminence": "cm_clust_prom",
        "glcm_Imc1": "cm_info_corr1",
        "glcm_Imc2": "cm_info_corr2",
    },
)
# pyradiomics deprecated Dissimilarity and SumVariance as duplicates; IBSI keeps both names.
_CM["glcm_DifferenceAverage"] = IbsiFeature("cm", "cm_diff_avg", aliases=("cm_dissimilarity",))
_CM["glcm_ClusterTendency"] = IbsiFeature("cm", "cm_clust_tend", aliases=("cm_sum_var",))

_RLM = _family(
    "rlm",
    {
        "glrlm_ShortRunEmphasis": "rlm_sre",
        "glrlm_LongRunEmphasis": "rlm_lre",
        "glrlm_LowGrayLevelRunEmphasis": "rlm_lgre",
        "glrlm_HighGrayLevelRunEmphasis": "rlm_hgre",
        "glrlm_ShortRunLowGrayLevelEmphasis": "rlm_srlge",
        "glrlm_ShortRunHighGrayLevelEmphasis": "rlm_srhge",
        "glrlm_LongRunLowGrayLevelEmphasis": "rlm_lrlge",
        "glrlm_LongRunHighGrayLevelEmphasis": "rlm_lrhge",
        "glrlm_GrayLevelNonUniformity": "rlm_glnu",
        "glrlm_GrayLevelNonUniformityNormalized": "rlm_glnu_norm",
        "glrlm_RunLengthNonUniformity": "rlm_rlnu",
        "glrlm_RunLengthNonUniformityNormalized": "rlm_rlnu_norm",
        "glrlm_RunPercentage": "rlm_r_perc",
        "glrlm_GrayLevelVariance": "rlm_gl_var",
        "glrlm_RunVariance": "rlm_rl_var",
        "glrlm_RunEntropy": "rlm_rl_entr",
    },
)

_SZM = _family(
    "szm",
    {
        "glszm_SmallAreaEmphasis": "szm_sze",
        "glszm_LargeAreaEmphasis": "szm_lze",
        "glszm_LowGrayLevelZoneEmphasis": "szm_lgze",
        "glszm_HighGrayLevelZoneEmphasis": "szm_hgze",
        "glszm_SmallAreaLowGrayLevelEmphasis": "szm_szlge",
        "glszm_SmallAreaHighGrayLevelEmphasis": "szm_szhge",
        "glszm_LargeAreaLowGrayLevelEmphasis": "szm_lzlge",
        "glszm_LargeAreaHighGrayLevelEmphasis": "szm_lzhge",
        "glszm_GrayLevelNonUniformity": "szm_glnu",
        "glszm_GrayLevelNonUniformityNormalized": "szm_glnu_norm",
        "glszm_SizeZoneNonUniformity": "szm_zsnu",
        "glszm_SizeZoneNonUniformityNormalized": "szm_zsnu_norm",
        "glszm_ZonePercentage": "szm_z_perc",
        "glszm_GrayLevelVariance": "szm_gl_var",
        "glszm_ZoneVariance": "szm_zs_var",
        "glszm_ZoneEntropy": "szm_zs_entr",
    },
)

_NGL = _family(
    "ngl",
    {
        "gldm_SmallDependenceEmphasis": "ngl_lde",
        "gldm_LargeDependenceEmphasis": "ngl_hde",
        "gldm_LowGrayLevelEmphasis": "ngl_lgce",
        "gldm_HighGrayLevelEmphasis": "ngl_hgce",
        "gldm_SmallDependenceLowGrayLevelEmphasis": "ngl_ldlge",
        "gldm_SmallDependenceHighGrayLevelEmphasis": "ngl_ldhge",
        "gldm_LargeDependenceLowGrayLevelEmphasis": "ngl_hdlge",
        "gldm_LargeDependenceHighGrayLevelEmphasis": "ngl_hdhge",
        "gldm_GrayLevelNonUniformity": "ngl_glnu",
        "gldm_DependenceNonUniformity": "ngl_dcnu",
        "gldm_DependenceNonUniformityNormalized": "ngl_dcnu_norm",
        "gldm_GrayLevelVariance": "ngl_gl_var",
        "gldm_DependenceVariance": "ngl_dc_var",
        "gldm_DependenceEntropy": "ngl_dc_entr",
    },
)

_NGT = _family(
    "ngt",
    {
        "ngtdm_Coarseness": "ngt_coarseness",
        "ngtdm_Contrast": "ngt_contrast",
        "ngtdm_Busyness": "ngt_busyness",
        "ngtdm_Complexity": "ngt_complexity",
        "ngtdm_Strength": "ngt_strength",
    },
)

#: pyradiomics ``featureClass_FeatureName`` → IBSI counterpart (original image type).
MAPPING: dict[str, IbsiFeature] = {**_MORPH, **_STAT, **_IH, **_CM, **_RLM, **_SZM, **_NGL, **_NGT}

_SHAPE2D = "2D shape of the slice mask; IBSI 1 morphology is defined in 3D only"
#: pyradiomics features with no IBSI 1 counterpart, and why.
NON_IBSI: dict[str, str] = {
    "shape_Maximum2DDiameterSlice": "largest in-plane (axial) diameter; IBSI has only the 3D diameter",
    "shape_Maximum2DDiameterColumn": "largest coronal-plane diameter; IBSI has only the 3D diameter",
    "shape_Maximum2DDiameterRow": "largest sagittal-plane diameter; IBSI has only the 3D diameter",
    "firstorder_TotalEnergy": "Energy times voxel volume: a pyradiomics extension",
    "firstorder_StandardDeviation": "deprecated in pyradiomics; IBSI lists the variance (stat_var) only",
    "glcm_MCC": "maximal correlation coefficient: not in IBSI 1",
    "glcm_Dissimilarity": "deprecated duplicate of DifferenceAverage (raises, no value); see cm_dissimilarity alias",
    "glcm_Homogeneity1": "deprecated duplicate of Id (raises, no value)",
    "glcm_Homogeneity2": "deprecated duplicate of Idm (raises, no value)",
    "glcm_SumVariance": "deprecated duplicate of ClusterTendency (raises, no value); see cm_sum_var alias",
    "gldm_GrayLevelNonUniformityNormalized": "deprecated, equals firstorder Uniformity (raises); "
    "see the ngl_glnu_norm alias",
    "gldm_DependencePercentage": "deprecated, always 1 for pyradiomics' GLDM (raises, no value)",
    **{f"shape2D_{name}": _SHAPE2D for name in (
        "MeshSurface", "PixelSurface", "Perimeter", "PerimeterSurfaceRatio", "Sphericity",
        "SphericalDisproportion", "MaximumDiameter", "MajorAxisLength", "MinorAxisLength", "Elongation",
    )},
}

# pyradiomics defaults of the settings that decide IBSI comparability.
_DEFAULTS: dict[str, Any] = {
    "force2D": False,
    "distances": [1],
    "weightingNorm": None,
    "symmetricalGLCM": True,
    "gldm_a": 0,
    "voxelArrayShift": 0,
}


def ibsi_tag(pyradiomics_name: str, settings: Mapping[str, Any]) -> str | None:
    """IBSI tag of a pyradiomics feature name (``original_glcm_Contrast``), or None.

    ``settings``: the extraction settings (``RadiomicExtractor.settings``, or a full params dict
    with ``setting`` / ``imageType``). None when the feature has no IBSI counterpart, comes from
    a filtered image, or was computed with settings that IBSI's definition does not cover.
    """
    tags = _tags(pyradiomics_name, _effective(settings))
    return tags[0] if tags else None


def to_ibsi(features: Mapping[str, float], settings: Mapping[str, Any]) -> dict[str, float]:
    """IBSI-tagged, IBSI-convention values of the mapped features (aliases included)."""
    effective = _effective(settings)
    out: dict[str, float] = {}
    for name, value in features.items():
        tags = _tags(name, effective)
        if not tags:
            continue
        entry = MAPPING[name.split("_", 1)[1]]
        converted = entry.convert(float(value)) if entry.convert else float(value)
        for tag in tags:
            out[tag] = converted
    return out


def unmapped_reason(pyradiomics_name: str, settings: Mapping[str, Any]) -> str | None:
    """Why a feature has no IBSI tag (None when it has one)."""
    effective = _effective(settings)
    if _tags(pyradiomics_name, effective):
        return None
    parts = pyradiomics_name.split("_", 1)
    if len(parts) != 2 or parts[0] != "original":
        return "not a feature of the original image (IBSI 1 covers unfiltered images only)"
    if parts[1] in NON_IBSI:
        return NON_IBSI[parts[1]]
    if parts[1] not in MAPPING:
        return "unknown pyradiomics feature"
    return _suffix(MAPPING[parts[1]], effective)[1] or "settings outside IBSI's definition"


def _tags(pyradiomics_name: str, settings: Mapping[str, Any]) -> list[str]:
    parts = pyradiomics_name.split("_", 1)
    if len(parts) != 2 or parts[0] != "original" or parts[1] not in MAPPING:
        return []
    entry = MAPPING[parts[1]]
    if any(settings.get(key) != value for key, value in entry.requires.items()):
        return []
    suffix, _ = _suffix(entry, settings)
    if suffix is None:
        return []
    tags = [entry.tag + suffix]
    for alias in entry.aliases:
        if alias.startswith("ngl_"):  # Uniformity as NGLDM feature: NGLDM aggregation rules
            ngl_suffix, _ = _suffix(IbsiFeature("ngl", alias), settings)
            if ngl_suffix is not None:
                tags.append(alias + ngl_suffix)
        else:
            tags.append(alias + suffix)
    return tags


def _suffix(entry: IbsiFeature, settings: Mapping[str, Any]) -> tuple[str | None, str]:
    """IBSI aggregation suffix for the family under these settings, or (None, reason)."""
    if entry.family in ("morph", "stat", "ih"):
        return "", ""
    dim = "2_5D" if settings["force2D"] else "3D"
    if list(settings["distances"] or [1]) != [1]:
        return None, f"distances {settings['distances']}: IBSI reference texture uses neighbours at distance 1"
    if entry.family in ("szm", "ngt"):
        return f"_{dim}", ""
    if entry.family == "ngl":
        if float(settings["gldm_a"]) != 0:
            return None, f"gldm_a {settings['gldm_a']}: IBSI NGLDM reference values use alpha 0"
        return f"_{dim}", ""
    if entry.family == "cm" and not settings["symmetricalGLCM"]:
        return None, "asymmetric GLCM: IBSI co-occurrence matrices are symmetric"
    norm = settings["weightingNorm"]
    if norm is None:
        return f"_{dim}_avg", ""
    if norm == "no_weighting":
        return f"_{dim}_comb", ""
    return None, f"weightingNorm {norm!r}: distance-weighted merging is not an IBSI aggregation"


def _effective(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Settings for the original image: defaults < global settings < ``imageType: Original``."""
    if "setting" in settings or "imageType" in settings:  # a full params dict
        image_types = settings.get("imageType") or {}
        merged = {**(settings.get("setting") or {}), **(image_types.get("Original") or {})}
    else:
        merged = dict(settings)
    return {**_DEFAULTS, **{k: v for k, v in merged.items() if v is not None or k == "weightingNorm"}}
