"""Stage 4, explanation: SHAP values, Grad-CAM heat maps and the case's reasons."""
