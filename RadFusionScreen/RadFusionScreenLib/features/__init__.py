"""Stage 2, features: pyradiomics (and its faster scoped classes), CNN deep features, IBSI names, cohort tables."""
