"""Installing what the engine needs into Slicer's Python, the Slicer way.

- torch through the PyTorch extension (``EXTENSION_DEPENDS PyTorch``): its
  ``PyTorchUtilsLogic.installTorch`` picks the CPU or CUDA build and asks the user once;
- the rest (``Resources/requirements.txt``, generated from pyproject.toml) with
  ``slicer.packaging.pip_ensure``: one confirmation, nothing in testing mode, and a
  constraints file that pins every package already installed (other than the requested ones)
  to its installed version, so nothing Slicer bundles (numpy, SimpleITK, pydicom, ...; never
  in requirements.txt) is reinstalled or upgraded; packages not yet installed get the tested
  versions of ``Resources/constraints.txt``.

Nothing installs at import or in the Widget's ``setup()``: only when the user first needs
the engine (choosing a model or Analyze).
"""

from __future__ import annotations

import logging
import tempfile
from importlib import metadata
from pathlib import Path

import slicer
import slicer.packaging  # Slicer 5.12: pip_ensure, load_requirements
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REQUESTER = "RadFusionScreen"
TORCH_REQUIREMENT = ">=2.2"  # pyproject.toml's torch range (a test keeps them equal)


class PackagesMissing(RuntimeError):
    """The engine's Python packages are not installed (declined, testing mode, or failed)."""


def missingRequirements(requirementsPath: str | Path) -> list[Requirement]:
    """Requirements of the file that are not installed, or installed at a version outside the range."""
    missing = []
    for requirement in slicer.packaging.load_requirements(requirementsPath):
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(requirement)
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            missing.append(requirement)
    return missing


def torchInstalled() -> bool:
    try:
        metadata.version("torch")
    except metadata.PackageNotFoundError:
        return False
    return True


def missingPackages(requirementsPath: str | Path) -> list[str]:
    """What is missing, as text (torch included); nothing is installed."""
    return ([] if torchInstalled() else [f"torch{TORCH_REQUIREMENT}"]) + [
        str(r) for r in missingRequirements(requirementsPath)]


def installConstraints(testedConstraintsPath: str | Path, requested: list[Requirement]) -> str:
    """pip constraints: every installed distribution at its installed version (except the
    ``requested`` ones, which may need a newer version; Slicer's bundled packages are never
    among them), then the tested version of each package that is not installed yet."""
    installed = {}
    for distribution in metadata.distributions():
        name = distribution.metadata["Name"]
        if name:
            installed[canonicalize_name(name)] = distribution.version
    upgradable = {canonicalize_name(r.name) for r in requested}
    lines = [f"{name}=={version}" for name, version in sorted(installed.items()) if name not in upgradable]
    for requirement in slicer.packaging.load_requirements(testedConstraintsPath):
        if canonicalize_name(requirement.name) not in installed:
            lines.append(str(requirement))
    return "\n".join(lines) + "\n"


def ensurePackages(requirementsPath: str | Path, testedConstraintsPath: str | Path) -> None:
    """Install what is missing (torch first, then the rest); raises :class:`PackagesMissing`
    with the reason when something is still missing afterwards."""
    testing = bool(slicer.app.testingEnabled())
    if not torchInstalled():
        if testing:
            raise PackagesMissing("PyTorch is not installed (testing mode installs nothing)")
        _installTorch()
    missing = missingRequirements(requirementsPath)
    if missing and not testing:
        with tempfile.TemporaryDirectory() as folder:
            constraints = Path(folder) / "constraints.txt"
            constraints.write_text(installConstraints(testedConstraintsPath, missing))
            try:
                slicer.packaging.pip_ensure(missing, constraints=constraints, requester=REQUESTER)
            except RuntimeError as error:  # the user declined
                raise PackagesMissing(str(error)) from None
        missing = missingRequirements(requirementsPath)
    if missing:
        raise PackagesMissing("missing Python packages: " + ", ".join(str(r) for r in missing)
                              + (" (testing mode installs nothing)" if testing else ""))


def _installTorch() -> None:
    try:
        from PyTorchUtils import PyTorchUtilsLogic
    except ImportError:
        raise PackagesMissing("PyTorch is not installed and the PyTorch extension is missing: install "
                              "'PyTorch' from the Extensions Manager, restart Slicer, then try again") from None
    logging.info("RadFusionScreen: installing PyTorch through the PyTorch extension")
    if PyTorchUtilsLogic().installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT) is None:
        raise PackagesMissing("PyTorch was not installed (declined)")
