#!/usr/bin/env bash
# A Slicer-like virtual environment, .venv-slicer, and the checks that run in it.
#
# What Slicer 5.12 has when the module runs, as closely as pip can make it:
#   1. torch, the CPU build, installed first (in Slicer the PyTorch extension installs it);
#   2. the packages Slicer 5.12 ships in its own Python, at exactly its versions
#      (numpy, scipy, pydicom, SimpleITK, pillow, highdicom, cryptography, and pip/setuptools/wheel),
#      from ../shared/slicer-5.12/bundled-python-packages.txt, whose every line is also a -c
#      constraint on every later install: nothing below may change them;
#   3. what the module itself installs on first use: RadFusionScreen/Resources/requirements.txt
#      with -c RadFusionScreen/Resources/constraints.txt (its tested pins);
#   4. test tools only: pytest, hypothesis, and slicer-core + vtk for headless MRML (stand-ins
#      for Slicer's compiled MRML; installed --no-deps, as the vtk wheel declares matplotlib).
# Never installed: the `train` extra's packages that serving does not list (scikit-learn, ...):
# checked absent, so the tests show that serving does not need them.
# The engine is not pip-installed: as in Slicer, the module folder is on the path
# (PYTHONPATH=RadFusionScreen).
#
# Then: the screening and Logic tests, and scripts/screen_shipped_bundles.py (every bundle in
# models/ screens a real case through the API and through the CLI as Slicer's widget runs it).
#
# The environment is rebuilt from scratch when any input (this script, the bundled list,
# the requirement and constraint files, the interpreter) changed, else reused as is;
# --fresh forces a rebuild. Skipped (exit 0) when the bundled list is absent.
# Env: PYTHON (interpreter, default python3), RADFUSION_SLICER_BUNDLED (the bundled list).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PYTHON="${PYTHON:-python3}"
VENV=.venv-slicer
BUNDLED="${RADFUSION_SLICER_BUNDLED:-$ROOT/../shared/slicer-5.12/bundled-python-packages.txt}"
REQUIREMENTS=RadFusionScreen/Resources/requirements.txt
MODULE_CONSTRAINTS=RadFusionScreen/Resources/constraints.txt
# Serving packages that come with Slicer 5.12 (never in requirements.txt): exactly Slicer's versions.
SLICER_SHIPS=(numpy scipy pydicom SimpleITK pillow highdicom cryptography)
# The screening and Logic tests (none needs the `train` extra; the few that build a model skip).
TESTS=(test_screen test_slicer_logic test_slicer_glue test_mrml_adapter test_module_static
       test_bundle_trust test_io test_dicom test_dicom_seg test_radiomic test_thin_volumes
       test_deep test_gradcam test_cli test_bad_input_catalogue test_cohort test_fuzz)
# Versions reported after the install.
SHOWN="numpy scipy pydicom simpleitk pillow highdicom cryptography torch pandas pyradiomics-bhklab lightgbm xgboost-cpu safetensors psutil"

FRESH=0
for arg in "$@"; do
    case "$arg" in
        --fresh) FRESH=1 ;;
        *) echo "usage: $0 [--fresh]" >&2; exit 2 ;;
    esac
done

if [ ! -f "$BUNDLED" ]; then
    echo "slicer_like_env: SKIPPED: Slicer 5.12's bundled package list not found at $BUNDLED" \
         "(set RADFUSION_SLICER_BUNDLED); no Slicer-like environment was built or checked"
    exit 0
fi

pip_install() {  # pip, without the local index's "Location ... is ignored" noise
    "$VENV/bin/python" -m pip install --quiet "$@" \
        2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
on_error() {
    echo "slicer_like_env: FAILED at line $1 of $0 (if pip reported a conflict above, a requirement" \
         "cannot be met with Slicer 5.12's bundled versions: that is the finding, not a set-up problem)" >&2
}
trap 'on_error $LINENO' ERR

step_start=$(date +%s)
stamp=$( { cat "$0" "$BUNDLED" "$REQUIREMENTS" "$MODULE_CONSTRAINTS" constraints.txt; "$PYTHON" -VV; } | sha256sum | cut -c1-16)
if [ "$FRESH" = 0 ] && [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.inputs" 2>/dev/null)" = "$stamp" ]; then
    echo "slicer_like_env: reusing $VENV (inputs unchanged)"
else
    echo "slicer_like_env: building $VENV with $("$PYTHON" -V 2>&1) (Slicer 5.12 has Python 3.12.10)"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    # pip / setuptools / wheel as Slicer ships them.
    pip_install -c "$BUNDLED" pip setuptools wheel
    # 1. torch first, the tested CPU pin, so nothing later can pull a CUDA build or torchvision.
    torch_pin=$(grep -iE '^torch==' constraints.txt)
    pip_install -c "$BUNDLED" "$torch_pin"
    # 2. what Slicer ships, at its versions.
    pip_install -c "$BUNDLED" "${SLICER_SHIPS[@]}"
    # 3. what the module installs on first use.
    pip_install -c "$MODULE_CONSTRAINTS" -c "$BUNDLED" -r "$REQUIREMENTS"
    # 4. test tools (pins from constraints.txt); vtk's wheel requires matplotlib (its optional
    #    text rendering), which Slicer's own VTK does not: slicer-core and vtk without dependencies.
    grep -iE '^(pytest|hypothesis|slicer-core|vtk)==' constraints.txt > "$VENV/test-pins.txt"
    pip_install -c "$VENV/test-pins.txt" -c "$BUNDLED" pytest hypothesis
    pip_install --no-deps -c "$VENV/test-pins.txt" slicer-core vtk
    echo "$stamp" > "$VENV/.inputs"
fi

# Checks of the environment itself: Slicer's versions untouched, no training-only packages, the
# engine found through the module folder only, pip's dependency check clean but for vtk's matplotlib.
PYTHONPATH=RadFusionScreen "$VENV/bin/python" - "$BUNDLED" <<'EOF'
import importlib.util, re, sys, sysconfig, tomllib
from importlib import metadata
from pathlib import Path

def canonical(name):
    return re.sub(r"[-_.]+", "-", name).lower()

bundled = dict(line.split("==") for line in Path(sys.argv[1]).read_text().split() if "==" in line)
site = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})  # not PYTHONPATH's egg-info
installed = {canonical(d.metadata["Name"]): d.version for d in metadata.distributions(path=site)}
problems = [f"{name} {installed[canonical(name)]} installed, Slicer 5.12 ships {version}"
            for name, version in bundled.items()
            if canonical(name) in installed and installed[canonical(name)] != version]
project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
def names(requirements):
    return {canonical(re.match(r"[A-Za-z0-9._-]+", text).group()) for text in requirements}
training_only = names(project["optional-dependencies"]["train"]) - names(project["dependencies"])
problems += [f"{name} {installed[name]} is installed: the `train` extra must not be in this environment"
             for name in sorted(training_only) if name in installed]
problems += [f"{name} is installed: {why}" for name, why in
             (("torchvision", "never install it beside the CPU torch"),
              ("radfusionscreen", "the engine must come from the module folder, as in Slicer"))
             if name in installed]
engine = importlib.util.find_spec("RadFusionScreenLib")
if engine is None or Path(engine.origin).resolve().parents[1] != Path("RadFusionScreen").resolve():
    problems.append(f"RadFusionScreenLib not found in RadFusionScreen/ ({engine and engine.origin})")
if problems:
    sys.exit("slicer_like_env: not Slicer-like (--fresh rebuilds it):\n  " + "\n  ".join(problems))
EOF
check=$("$VENV/bin/python" -m pip check 2>&1 || true)
unexpected=$(printf '%s\n' "$check" | grep -v -e '^No broken requirements' -e '^vtk .* requires matplotlib' -e '^$' || true)
if [ -n "$unexpected" ]; then
    echo "slicer_like_env: pip check: $unexpected" >&2
    exit 1
fi
"$VENV/bin/python" -m pip freeze --all 2>/dev/null > "$VENV/freeze.txt"
echo "slicer_like_env: $("$VENV/bin/python" -V 2>&1); full list in $VENV/freeze.txt; the versions that matter:"
"$VENV/bin/python" - "$VENV/freeze.txt" $SHOWN <<'EOF'
import re, sys
from pathlib import Path
pins = {re.sub(r"[-_.]+", "-", n).lower(): v for n, _, v in
        (line.partition("==") for line in Path(sys.argv[1]).read_text().split()) if v}
print("  " + "  ".join(f"{name}=={pins.get(name, 'MISSING')}" for name in sys.argv[2:]))
EOF
install_s=$(( $(date +%s) - step_start ))

tests_start=$(date +%s)
test_files=()
for name in "${TESTS[@]}"; do test_files+=("RadFusionScreen/Testing/Python/$name.py"); done
tests_rc=0
PYTHONPATH=RadFusionScreen "$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider "${test_files[@]}" || tests_rc=$?
tests_s=$(( $(date +%s) - tests_start ))

# The bundles are screened whatever the tests gave (their table helps to read a failure).
bundles_start=$(date +%s)
bundles_rc=0
PYTHONPATH=RadFusionScreen "$VENV/bin/python" scripts/screen_shipped_bundles.py || bundles_rc=$?
bundles_s=$(( $(date +%s) - bundles_start ))
trap - ERR
if [ "$tests_rc" != 0 ] || [ "$bundles_rc" != 0 ]; then
    echo "slicer_like_env: FAILED: tests exit $tests_rc, shipped bundles exit $bundles_rc" \
         "(install ${install_s} s, tests ${tests_s} s, shipped bundles ${bundles_s} s)" >&2
    exit 1
fi
echo "slicer_like_env: passed; install ${install_s} s, tests ${tests_s} s, shipped bundles ${bundles_s} s"
