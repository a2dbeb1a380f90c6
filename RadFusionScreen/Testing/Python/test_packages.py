"""What the module installs into Slicer, and how (Slicer 5.12's real ``slicer.packaging`` and
the PyTorch extension's real ``PyTorchUtils``; pip itself is a recorded fake).

- ``Resources/requirements.txt`` / ``constraints.txt`` are generated from pyproject.toml: they
  carry every serving dependency (safetensors, lightgbm, xgboost-cpu, ...), never torch (the
  PyTorch extension installs it) nor a package Slicer 5.12 bundles;
- the install runs through ``pip_ensure`` with one confirmation and a constraints file that
  pins what is installed, so Slicer's numpy / SimpleITK / pydicom are never changed; nothing
  installs in testing mode; torch goes through ``PyTorchUtilsLogic.installTorch``.
"""

from __future__ import annotations

import sys
import tomllib
import types
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import slicer_code

ROOT = Path(__file__).resolve().parents[3]
RESOURCES = ROOT / "RadFusionScreen" / "Resources"
BUNDLED = slicer_code.SLICER_512 / "bundled-python-packages.txt"


def _requirements(path: Path) -> list[Requirement]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith(("#", "-"))]


def _bundled() -> dict[str, str]:
    if not BUNDLED.is_file():
        pytest.skip(f"Slicer 5.12's bundled package list is not available at {BUNDLED}")
    return {canonicalize_name(n): v for n, v in (line.split("==") for line in BUNDLED.read_text().split())}


def test_generated_files_match_pyproject(monkeypatch):
    _bundled()
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import write_slicer_requirements

    assert write_slicer_requirements.main(["--check"]) == 0, \
        "run scripts/write_slicer_requirements.py: Resources/requirements.txt or constraints.txt is stale"


def test_requirements_serve_the_shipped_bundles_and_leave_slicers_packages_alone():
    bundled = _bundled()
    names = {canonicalize_name(r.name) for r in _requirements(RESOURCES / "requirements.txt")}
    assert {"safetensors", "lightgbm", "xgboost-cpu", "pyradiomics-bhklab", "psutil"} <= names
    assert not names & set(bundled), f"the module would reinstall Slicer's packages: {sorted(names & set(bundled))}"
    assert "torch" not in names, "torch comes from the PyTorch extension"
    pinned = {canonicalize_name(r.name) for r in _requirements(RESOURCES / "constraints.txt")}
    assert not pinned & set(bundled) and "torch" not in pinned
    serving = [Requirement(t) for t in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    for requirement in serving:
        name = canonicalize_name(requirement.name)
        assert name in names | set(bundled) | {"torch"}, f"{name}: a serving dependency the module never installs"


def test_the_engine_serves_without_training_extras():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    hidden = {canonicalize_name(Requirement(t).name) for t in extras["train"]} & {"lightgbm", "xgboost-cpu", "safetensors"}
    assert not hidden, f"serving dependencies hidden in the train extra: {hidden}"


def test_torch_range_is_pyprojects():
    slicer_code.install()
    from RadFusionScreenLib.slicer_glue.packages import TORCH_REQUIREMENT

    serving = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch = next(Requirement(t) for t in serving if Requirement(t).name == "torch")
    assert str(torch.specifier) == TORCH_REQUIREMENT


@pytest.fixture()
def slicer_app(monkeypatch):
    """Slicer 5.12's packaging on slicer-core; confirmations and pip runs recorded (pip never runs)."""
    slicer = slicer_code.install()
    import slicer.packaging  # noqa: F401  (Slicer 5.12's own file)

    record = types.SimpleNamespace(confirmations=[], pip=[], constraints=[], modules=[], testing=False)

    def confirm(text, windowTitle=None, **kwargs):
        record.confirmations.append((windowTitle, text, kwargs.get("detailedText")))
        return True

    def execute(module, args, blocking=True, *more, **kwargs):
        record.modules.append((module, list(args)))
        if module == "pip":
            record.pip.append(list(args))
            if "-c" in args:
                record.constraints.append(Path(args[args.index("-c") + 1]).read_text())
            if any(str(a).startswith("light-the-torch") for a in args):  # "installs" light-the-torch
                package = types.ModuleType("light_the_torch")
                package.__path__ = []
                monkeypatch.setitem(sys.modules, "light_the_torch", package)
                monkeypatch.setitem(sys.modules, "light_the_torch._patch", types.ModuleType("light_the_torch._patch"))

    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", confirm)
    monkeypatch.setattr(slicer.util, "executePythonModule", execute)
    monkeypatch.setattr(slicer.util, "_executePythonModule", execute)
    monkeypatch.setattr(slicer.app, "testingEnabled", lambda: record.testing, raising=False)
    monkeypatch.setattr(slicer.app, "commandOptions",
                        lambda: types.SimpleNamespace(testingEnabled=record.testing), raising=False)
    return record


def _requirements_file(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "requirements.txt"
    path.write_text("# test requirements\n" + "".join(f"{line}\n" for line in lines))
    return path


def test_missing_packages_install_through_pip_ensure_with_one_confirmation(slicer_app, tmp_path):
    from RadFusionScreenLib.slicer_glue import packages

    requirements = _requirements_file(tmp_path, "radfusion-not-a-real-package>=1.0", "pandas>=2.0")
    with pytest.raises(packages.PackagesMissing, match="radfusion-not-a-real-package"):  # the fake pip installs nothing
        packages.ensurePackages(requirements, RESOURCES / "constraints.txt")
    assert len(slicer_app.confirmations) == 1, "one confirmation for all packages"
    assert "radfusion-not-a-real-package" in slicer_app.confirmations[0][2]
    assert slicer_app.pip == [["install", "radfusion-not-a-real-package>=1.0", "-c", slicer_app.pip[0][-1]]]
    pins = {canonicalize_name(Requirement(line).name): line for line in slicer_app.constraints[0].split()}
    for name in ("numpy", "simpleitk", "pydicom", "scipy", "pillow"):  # what Slicer bundles stays as it is
        assert pins[name] == f"{Requirement(pins[name]).name}=={metadata.version(name)}"
    assert "radfusion-not-a-real-package" not in pins


def test_nothing_installs_in_testing_mode(slicer_app, tmp_path):
    from RadFusionScreenLib.slicer_glue import packages

    slicer_app.testing = True
    requirements = _requirements_file(tmp_path, "radfusion-not-a-real-package>=1.0")
    with pytest.raises(packages.PackagesMissing, match="testing mode"):
        packages.ensurePackages(requirements, RESOURCES / "constraints.txt")
    assert not slicer_app.confirmations and not slicer_app.modules


def test_nothing_to_do_when_everything_is_installed(slicer_app):
    from RadFusionScreenLib.slicer_glue import packages

    packages.ensurePackages(RESOURCES / "requirements.txt", RESOURCES / "constraints.txt")
    assert not slicer_app.confirmations and not slicer_app.modules
    assert packages.missingPackages(RESOURCES / "requirements.txt") == []


def test_torch_comes_from_the_pytorch_extension(slicer_app, tmp_path, monkeypatch):
    from RadFusionScreenLib.slicer_glue import packages

    monkeypatch.setattr(packages, "torchInstalled", lambda: False)  # as in a fresh Slicer
    requirements = _requirements_file(tmp_path, "pandas>=2.0")
    packages.ensurePackages(requirements, RESOURCES / "constraints.txt")
    light_the_torch = [args for module, args in slicer_app.modules if module == "light_the_torch"]
    assert light_the_torch == [["install", f"torch{packages.TORCH_REQUIREMENT}", "torchvision"]]
    assert not any("torch" in " ".join(args) and "light-the-torch" not in " ".join(args) for args in slicer_app.pip), \
        "torch is never pip-installed by the module itself"
    assert len(slicer_app.confirmations) == 1, "the user confirms the PyTorch install once"


def test_declining_leaves_a_clear_reason(slicer_app, tmp_path, monkeypatch):
    import slicer

    from RadFusionScreenLib.slicer_glue import packages

    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda *args, **kwargs: False)
    requirements = _requirements_file(tmp_path, "radfusion-not-a-real-package>=1.0")
    with pytest.raises(packages.PackagesMissing, match="declined"):
        packages.ensurePackages(requirements, RESOURCES / "constraints.txt")
    assert not slicer_app.pip
