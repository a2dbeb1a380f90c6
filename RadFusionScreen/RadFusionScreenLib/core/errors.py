"""Exception types of the engine.

Every error a user can cause derives from :class:`RadFusionError` and carries a message
that says what is wrong, which input it concerns and what to do about it.
"""


class RadFusionError(Exception):
    """Base class of all errors raised deliberately by the engine."""


class InputError(RadFusionError, ValueError):
    """An input file, array or value cannot be used as given."""


class GeometryMismatchError(InputError):
    """Image and mask do not share one voxel grid."""


class DicomSeriesError(InputError):
    """A DICOM folder does not hold exactly one consistent image series."""


class MaskError(InputError):
    """The mask is empty, too small, or its label is ambiguous or absent."""


class BundleError(InputError):
    """A model bundle cannot be written or served as it is (tampered, incomplete, too new)."""
