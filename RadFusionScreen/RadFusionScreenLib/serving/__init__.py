"""Stage 5, serving: a bundle applied to one case (``Screener``), and the warm engine's wire protocol."""
