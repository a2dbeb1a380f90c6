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


def screen(image, mask, model=None, clinical=None, device=None, **options):
    """Screen one case with a model bundle (default: the shipped one); see :mod:`.screening`.

    Returns a :class:`~.screening.ScreenResult`. Imports the heavy engine on first call.
    """
    from .screening import screen as _screen

    return _screen(image, mask, model=model, clinical=clinical, device=device, **options)
