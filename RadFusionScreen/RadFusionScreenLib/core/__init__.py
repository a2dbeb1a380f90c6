"""Stage 0, shared by every stage: the error types, the package version, file and text helpers."""
