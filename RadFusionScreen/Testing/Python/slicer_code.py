"""Slicer 5.12's own Python code on slicer-core, for the module's tests (no home-made stand-ins).

``../shared/slicer-5.12/python/slicer`` is appended to the installed ``slicer`` package's path,
so ``slicer.ScriptedLoadableModule``, ``slicer.parameterNodeWrapper``, ``slicer.i18n`` and
``slicer.packaging`` are Slicer's real files while ``slicer.vtkMRML*`` and ``slicer.util`` stay
slicer-core's. Only what is compiled is stubbed: the ``qt`` / ``ctk`` widget classes and the
``qMRML*`` / ``qSlicer*`` widget names, as distinct placeholder classes (the GUI connectors
compare ``type(widget)`` with them) whose instances accept any attribute, call and signal.
Tests that need it skip, with the path, when the shared folder is absent.
"""

from __future__ import annotations

import functools
import re
import sys
import types
from pathlib import Path

import pytest

SLICER_512 = Path(__file__).resolve().parents[3].parent / "shared" / "slicer-5.12"
SLICER_PYTHON = SLICER_512 / "python"
HEADERS = SLICER_512 / "headers"


class _Anything:
    """A placeholder value: any attribute, call, signal connection or item works and is recorded."""

    def __init__(self, name: str = "") -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "calls", [])

    def __getattr__(self, name: str) -> "_Anything":
        return _Anything(f"{self._name}.{name}")

    def __call__(self, *args, **kwargs) -> "_Anything":
        self.calls.append((args, kwargs))
        return _Anything(f"{self._name}()")

    def __iter__(self):
        return iter(())

    def __bool__(self) -> bool:
        return False


class _PlaceholderMeta(type):
    def __getattr__(cls, name: str) -> _Anything:  # enum values such as QProcess.NormalExit
        if name.startswith("__"):
            raise AttributeError(name)
        return _Anything(f"{cls.__name__}.{name}")


class Placeholder(metaclass=_PlaceholderMeta):
    """Base of every stubbed compiled widget class: instances take any attribute or call."""

    def __init__(self, *args, **kwargs) -> None:
        self.__dict__["properties"] = {}

    def __getattr__(self, name: str) -> _Anything:
        if name.startswith("__"):
            raise AttributeError(name)
        value = _Anything(f"{type(self).__name__}.{name}")
        self.__dict__[name] = value
        return value


def _placeholder_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__doc__ = f"placeholder classes for the compiled {name} module (tests only)"

    def __getattr__(attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        cls = _PlaceholderMeta(attribute, (Placeholder,), {})
        setattr(module, attribute, cls)
        return cls

    module.__getattr__ = __getattr__
    return module


@functools.lru_cache(maxsize=1)
def install() -> types.ModuleType:
    """Put Slicer 5.12's Python code and the compiled-widget placeholders in place; the ``slicer`` package."""
    slicer = pytest.importorskip("slicer", reason="slicer-core (headless MRML) is not installed")
    if not (SLICER_PYTHON / "slicer" / "parameterNodeWrapper").is_dir():
        pytest.skip(f"Slicer 5.12's Python code is not available at {SLICER_PYTHON} (read-only shared folder)")
    for name in ("qt", "ctk"):
        sys.modules.setdefault(name, _placeholder_module(name))
    for path in (SLICER_PYTHON / "slicer").rglob("*.py"):  # widget classes named in Slicer's own code
        for widget in set(re.findall(r"slicer\.(q(?:MRML|Slicer)\w+)", path.read_text(encoding="utf-8"))):
            if not hasattr(slicer, widget):
                setattr(slicer, widget, _PlaceholderMeta(widget, (Placeholder,), {}))
    if not hasattr(slicer, "app"):  # the compiled qSlicerApplication
        slicer.app = slicer.qSlicerApplication() if isinstance(getattr(slicer, "qSlicerApplication", None), type) \
            else _PlaceholderMeta("qSlicerApplication", (Placeholder,), {})()
        # An untranslated application: QCoreApplication::translate returns the source text.
        slicer.app.__dict__["translate"] = lambda context, text, *args: text
    shared = str(SLICER_PYTHON / "slicer")
    if shared not in slicer.__path__:
        slicer.__path__.append(shared)
    modules = str(SLICER_PYTHON / "modules")
    if modules not in sys.path:
        sys.path.append(modules)
    return slicer


def widget(class_name: str) -> Placeholder:
    """An instance of a ``.ui`` widget class, as the real GUI connectors see its type."""
    import ctk
    import qt

    slicer = install()
    owner = ctk if class_name.startswith("ctk") else slicer if class_name.startswith(("qMRML", "qSlicer")) else qt
    cls = getattr(owner, class_name)
    if not isinstance(cls, type):  # e.g. a slicer-core name that is not a widget
        raise AssertionError(f"{class_name} is not a widget class here")
    return cls()


def header_api(class_name: str) -> set[str] | None:
    """Names PythonQt exposes from a Slicer/CTK header: public slots, Q_INVOKABLE methods,
    Q_PROPERTY names and setters/getters, signals. None when the header is not in the folder."""
    header = HEADERS / f"{class_name}.h"
    if not header.is_file():
        return None
    text = re.sub(r"//.*", "", header.read_text(encoding="utf-8"))
    names: set[str] = set()
    for prop in re.finditer(r"Q_PROPERTY\(\s*[\w:<>*& ]+?\s+(\w+)\s+READ\s+(\w+)(?:\s+WRITE\s+(\w+))?", text):
        names.update(n for n in prop.groups() if n)
    names.update(re.findall(r"Q_INVOKABLE\s+[\w:<>*&\s]+?\b(\w+)\s*\(", text))
    for block in re.finditer(r"(?:public\s+slots|Q_SLOTS|signals|Q_SIGNALS)\s*:(.*?)(?=\n\s*(?:public|protected|private)"
                             r"\b[^:]*:|\n\s*};)", text, flags=re.S):
        names.update(re.findall(r"\b(\w+)\s*\(", block.group(1)))
    return names


def header_base(class_name: str) -> str | None:
    """The public base class named in a header (``class X : public Y``)."""
    header = HEADERS / f"{class_name}.h"
    if not header.is_file():
        return None
    match = re.search(rf"class\s+(?:\w+\s+)?{class_name}\s*:\s*public\s+(\w+)", header.read_text(encoding="utf-8"))
    return match.group(1) if match else None
