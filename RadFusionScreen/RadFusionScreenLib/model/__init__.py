"""Stage 3, model: harmonisation, feature selection, training and comparison, model bundles and their trust."""
