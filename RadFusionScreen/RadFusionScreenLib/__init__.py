"""RadFusionScreen engine: deep-learning radiomics without Slicer.

Importing this package is cheap; heavy libraries (pyradiomics, torch) load on first use.
"""

from RadFusionScreenLib.core.version import __version__  # noqa: F401  (re-exported)

from RadFusionScreenLib.core.errors import (  # noqa: F401  (re-exported)
    DicomSeriesError,
    GeometryMismatchError,
    InputError,
    MaskError,
    RadFusionError,
)


def screen(image, mask, model=None, clinical=None, device=None, **options):
    """Screen one case with a model bundle (default: the shipped one); see :mod:`.serving.screening`.

    Returns a :class:`~.serving.screening.ScreenResult`. Imports the heavy engine on first call.
    """
    from RadFusionScreenLib.serving.screening import screen as _screen

    return _screen(image, mask, model=model, clinical=clinical, device=device, **options)
