"""Radiomic + deep features of one case: the unit of work behind `features`, `extract` and screening.

A :class:`CaseFeatureExtractor` is built once (it owns the pyradiomics extractor and the CNN)
and then applied to many cases, so nothing heavy is reloaded per case.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from RadFusionScreenLib.core.version import __version__
from RadFusionScreenLib.core.errors import InputError
from RadFusionScreenLib.features.field_of_view import FieldOfView, crop_to_field_of_view

MODALITIES = ("CT", "MR", "US")
NAME_STYLES = ("pyradiomics", "ibsi")
# Version of the engine's own rules for radiomic values (part of the cache key: cached rows made
# before a change are recomputed). 2: LoG on extraction-grid axes of 1-3 voxels (edge extension,
# radiomic.thin_volumes); 3: GLCM MCC from singular values (radiomic.scoped_classes).
RADIOMIC_VALUE_RULES = 3

# DICOM modality codes that we map onto one of the shipped default parameter sets.
_MODALITY_ALIASES = {"CT": "CT", "MR": "MR", "US": "US", "PT": "CT"}
# Air is about -1000 HU; MR and ultrasound intensities are never this negative.
_CT_MIN_INTENSITY = -500.0


@dataclass
class ExtractionConfig:
    """Everything that decides the feature values of a case (hashed into the cache key)."""

    params: str | None = None  # pyradiomics params YAML; None → shipped default for the modality
    modality: str | None = None  # CT / MR / US; None → from DICOM, 2D → US, else by intensities
    deep: str | None = "efficientnet-lite0"  # deep backbone name, None → no deep features
    device: str | None = None  # torch device for the CNN: None/auto, cpu, cuda
    label: int | None = None  # mask label value; None → the single non-zero label
    series_uid: str | None = None  # pick one series from a DICOM folder holding several
    names: str = "pyradiomics"  # column naming: pyradiomics names or IBSI tags
    segment: str | int | None = None  # DICOM SEG segment / RTSTRUCT ROI: name or number
    # Deep extractor options (RoiPreprocessing fields, e.g. {"views": "orthogonal"}); None → the
    # backbone's defaults for the modality. Recorded in a bundle through the extractor's settings.
    deep_options: dict[str, Any] | None = None
    # The region around the ROI the features see (features.field_of_view.FieldOfView fields, e.g.
    # {"slice_margin": 0}); None → the whole input. Recorded in a bundle; screening applies it.
    field_of_view: dict[str, int] | None = None

    def __post_init__(self) -> None:
        self.segment = normalise_segment(self.segment)
        if self.field_of_view is not None:
            self.field_of_view = FieldOfView.from_record(self.field_of_view).record()
        if self.deep_options is not None and not isinstance(self.deep_options, dict):
            raise InputError(f"deep_options must be a mapping of deep-extractor options, got {self.deep_options!r}")
        if self.deep_options and {"modality", "device"} & set(self.deep_options):
            raise InputError("deep_options cannot set modality or device: use the configuration's own fields")
        if self.modality is not None:
            self.modality = self.modality.upper()
            if self.modality not in MODALITIES:
                raise InputError(f"unknown modality {self.modality!r}: use one of {', '.join(MODALITIES)}")
        if self.names not in NAME_STYLES:
            raise InputError(f"unknown feature naming {self.names!r}: use one of {', '.join(NAME_STYLES)}")
        if self.params is not None and not Path(self.params).is_file():
            raise InputError(f"params file not found: {self.params}")

    def fingerprint(self) -> dict[str, Any]:
        """The settings that change feature values (device does not, by design)."""
        params_text = Path(self.params).read_text() if self.params else None
        return {
            "engine": __version__,
            "radiomic_value_rules": RADIOMIC_VALUE_RULES,
            "params_sha256": _sha256_text(params_text) if params_text else None,
            "modality": self.modality,
            "deep": None if self.names == "ibsi" else self.deep,
            "label": self.label,
            "series_uid": self.series_uid,
            "names": self.names,
            "segment": self.segment,
            # only when set, so caches of the default settings stay valid
            **({"deep_options": self.deep_options} if self.deep_options else {}),
            **({"field_of_view": self.field_of_view} if self.field_of_view else {}),
        }


def normalise_segment(segment: Any) -> str | int | None:
    """A segment choice as typed (API, CLI, CSV cell): blanks and NaN mean none, 2.0 becomes 2.

    Text stays text, even digits: a name is tried before a number (see
    :func:`.dicom_seg.choose_segment`), so a segment named "2" remains reachable.
    """
    if segment is None or isinstance(segment, bool):
        return None
    if isinstance(segment, (int, np.integer)):
        return int(segment)
    if isinstance(segment, (float, np.floating)):
        if not np.isfinite(segment):
            return None
        if float(segment).is_integer():
            return int(segment)
        raise InputError(f"segment {segment!r}: give a segment name or a whole number")
    text = str(segment).strip()
    if not text:
        return None
    return text


@dataclass
class CaseFeatures:
    """Features of one case, with the metadata needed to trust and reproduce them."""

    metadata: dict[str, Any] = field(default_factory=dict)
    radiomic: dict[str, float] = field(default_factory=dict)
    deep: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """One flat table row: metadata columns first, then features."""
        return {**self.metadata, **self.radiomic, **self.deep}


class CaseFeatureExtractor:
    """Loads image + mask, resolves modality and params, and computes radiomic + deep features."""

    def __init__(self, config: ExtractionConfig | None = None) -> None:
        self.config = config or ExtractionConfig()
        self._radiomic: dict[str, Any] = {}  # params path → RadiomicExtractor
        self._deep: dict[str, Any] = {}  # modality → deep extractor (one network, loaded once)

    def extract_paths(self, image_path: str | Path, mask_path: str | Path, modality: str | None = None) -> CaseFeatures:
        """Read image and mask from files (any supported format) and extract."""
        from RadFusionScreenLib.inputs.images import read_image_with_metadata, read_mask

        image, info = read_image_with_metadata(image_path, series_uid=self.config.series_uid)
        mask = read_mask(mask_path, reference=image, label=self.config.label, segment=self.config.segment)
        return self.extract(image, mask, modality=modality or info.get("modality"), source=info)

    def extract(
        self,
        image: sitk.Image,
        mask: sitk.Image,
        modality: str | None = None,
        source: dict[str, Any] | None = None,
    ) -> CaseFeatures:
        """Features of a geometry-checked image and binary mask."""
        modality = resolve_modality(self.config.modality or modality, image)
        metadata = case_metadata(image, mask, modality, source or {})  # of the input as given
        if self.config.field_of_view is not None:
            image, mask = crop_to_field_of_view(image, mask, FieldOfView.from_record(self.config.field_of_view))
        radiomic_extractor = self._radiomic_extractor(modality)
        radiomic, radiomic_notes = radiomic_extractor.execute_case(image, mask)
        if self.config.names == "ibsi":
            from RadFusionScreenLib.features.ibsi import to_ibsi

            radiomic = to_ibsi(radiomic, radiomic_extractor.settings)
        deep: dict[str, float] = {}
        deep_extractor = self._deep_extractor(modality)
        if deep_extractor is not None:
            values = deep_extractor.extract(image, mask)
            deep = dict(zip(deep_extractor.feature_names(), (float(v) for v in values)))
        metadata["params_sha256"] = radiomic_extractor.params_hash
        metadata["radiomics_notes"] = "; ".join(radiomic_notes)  # thin-volume treatments (radiomic.extractor doc)
        metadata["cnn_backbone"] = deep_extractor.name if deep_extractor is not None else ""
        metadata["engine_version"] = __version__
        return CaseFeatures(metadata=metadata, radiomic=radiomic, deep=deep)

    def _radiomic_extractor(self, modality: str):
        from RadFusionScreenLib.features.radiomic import RadiomicExtractor, default_params_path

        params = self.config.params or str(default_params_path(modality))
        if params not in self._radiomic:
            self._radiomic[params] = RadiomicExtractor(params)
        return self._radiomic[params]

    def _deep_extractor(self, modality: str):
        if self.config.deep is None or self.config.names == "ibsi":
            return None
        if modality not in self._deep:
            from RadFusionScreenLib.features.deep import get_deep_extractor

            self._deep[modality] = get_deep_extractor(self.config.deep, modality=modality, device=self.config.device,
                                                      **(self.config.deep_options or {}))
        return self._deep[modality]


def resolve_modality(declared: str | None, image: sitk.Image) -> str:
    """Declared (or DICOM) modality when known; else one-slice images are ultrasound, else CT or MR.

    The intensity rule only applies to files without a modality tag (NIfTI, NRRD, ...):
    CT in Hounsfield units holds air at about -1000, MR and ultrasound never go that low.
    """
    if declared:
        code = _MODALITY_ALIASES.get(declared.upper())
        if code is None:
            raise InputError(
                f"no default parameters for modality {declared!r}: pass --modality CT|MR|US or your own --params"
            )
        return code
    if image.GetDimension() == 2 or image.GetSize()[2] == 1:
        return "US"
    minimum = float(sitk.GetArrayViewFromImage(image).min())
    return "CT" if minimum <= _CT_MIN_INTENSITY else "MR"


def case_metadata(image: sitk.Image, mask: sitk.Image, modality: str, source: dict[str, Any]) -> dict[str, Any]:
    """Descriptive, non-identifying columns written before the features."""
    spacing = image.GetSpacing()
    roi_voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
    return {
        "modality": modality,
        "source_format": source.get("source_format", ""),
        "size": "x".join(str(s) for s in image.GetSize()),
        "spacing_mm": "x".join(f"{s:.4g}" for s in spacing),
        "roi_voxels": roi_voxels,
        "roi_volume_mm3": roi_voxels * float(np.prod(spacing)),
    }


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def hash_inputs(paths: list[Path], settings: dict[str, Any]) -> str:
    """Content hash of input files (a DICOM folder: all its files) plus the extraction settings."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if path.is_dir():  # slice order inside a folder is part of its content
                digest.update(str(file.relative_to(path)).encode())
            with open(file, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
    return digest.hexdigest()
