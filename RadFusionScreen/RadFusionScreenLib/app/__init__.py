"""Stage 8, entry points: the ``radfusion`` command line, ``radfusion train``, the warm engine, the demo.

Above :mod:`..slicer_glue` (stage 7) because the demo draws its views with Slicer's slice
pipeline when slicer-core is installed.
"""
