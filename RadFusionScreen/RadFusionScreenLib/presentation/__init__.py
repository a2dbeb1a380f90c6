"""Stage 6, presentation: the model report, model card, case report and their figures."""
