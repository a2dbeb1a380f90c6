"""The engine's version (pyproject.toml's ``version``; a test keeps them equal)."""

__version__ = "0.1.0"
