"""RadFusionScreen engine: deep-learning radiomics without Slicer.

Importing this package is cheap; heavy libraries (pyradiomics, torch) load on first use.
"""

__version__ = "0.1.0"

from .errors import (  # noqa: F401  (re-exported)
    DicomSeriesError,
    GeometryMismatchError,
    InputError,
    MaskError,
    RadFusionError,
)
