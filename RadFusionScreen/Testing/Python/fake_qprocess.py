"""A stand-in for Qt's compiled ``QProcess`` (and ``QProcessEnvironment``) that really runs the
program with :mod:`subprocess`, for tests of the module's background engine run.

Only what the module uses is there: string-signal ``connect`` / ``disconnect`` as PythonQt
spells them, ``start``, ``write`` (stdin), ``processId``, ``kill``, ``waitForFinished``,
``readAll*``, ``errorString``. Qt delivers signals from its event loop; here the test calls :meth:`pump`
(or :func:`run_until_finished`), which emits ``readyRead*``, ``errorOccurred`` and
``finished`` the way Qt does: a program that cannot start emits ``errorOccurred(FailedToStart)``
and never ``finished``; a process ended by a signal finishes with ``CrashExit`` (1).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import defaultdict


class QProcessEnvironment:
    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values = dict(values or {})

    @staticmethod
    def systemEnvironment() -> "QProcessEnvironment":
        return QProcessEnvironment(os.environ)

    def insert(self, name: str, value: str) -> None:
        self.values[name] = value

    def value(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)


class QByteArray:
    """Stand-in for Qt's QByteArray: bytes with ``data()``."""

    def __init__(self, data: bytes = b"") -> None:
        self._data = bytes(data)

    def data(self) -> bytes:
        return self._data


class _Bytes:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def data(self) -> bytes:
        return self._data


class QProcess:
    NormalExit, CrashExit = 0, 1
    FailedToStart = 0
    started: list["QProcess"] = []  # every process started, for the tests' inspection

    def __init__(self) -> None:
        self.slots = defaultdict(list)
        self.environment = QProcessEnvironment()
        self.workingDirectory = ""
        self.program, self.arguments = None, None
        self.popen: subprocess.Popen | None = None
        self._buffers = {"out": bytearray(), "err": bytearray()}
        self._lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        self._error = ""
        self._done = False

    # -------------------------------------------------------------- PythonQt API
    def connect(self, signal: str, slot) -> None:
        self.slots[signal].append(slot)

    def disconnect(self, signal: str, slot) -> None:
        if slot in self.slots[signal]:
            self.slots[signal].remove(slot)

    def setProcessEnvironment(self, environment: QProcessEnvironment) -> None:
        self.environment = environment

    def setWorkingDirectory(self, folder: str) -> None:
        self.workingDirectory = folder

    def start(self, program: str, arguments: list[str]) -> None:
        self.program, self.arguments = program, list(arguments)
        QProcess.started.append(self)
        try:
            self.popen = subprocess.Popen([program, *arguments], cwd=self.workingDirectory or None,
                                          env=self.environment.values, stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as error:
            self._error = str(error)
            self._pending_start_error = True
            return
        for name, stream in (("out", self.popen.stdout), ("err", self.popen.stderr)):
            reader = threading.Thread(target=self._drain, args=(name, stream), daemon=True)
            reader.start()
            self._readers.append(reader)

    def write(self, data) -> int:
        """Write to the process's stdin (nothing happens when it did not start, as in Qt)."""
        payload = data.data() if hasattr(data, "data") else bytes(data)
        if self.popen is None or self.popen.poll() is not None:
            return -1
        try:
            self.popen.stdin.write(payload)
            self.popen.stdin.flush()
        except (BrokenPipeError, ValueError):
            return -1
        return len(payload)

    def processId(self) -> int:
        return self.popen.pid if self.popen is not None else 0

    def errorString(self) -> str:
        return self._error or "Unknown error"

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()

    def waitForFinished(self, msecs: int = 30000) -> bool:
        if self.popen is None:
            return False
        try:
            self.popen.wait(timeout=msecs / 1000)
        except subprocess.TimeoutExpired:
            return False
        self._finish()
        return True

    def readAllStandardOutput(self) -> _Bytes:
        return self._take("out")

    def readAllStandardError(self) -> _Bytes:
        return self._take("err")

    # -------------------------------------------------------------- event loop stand-in
    def pump(self) -> bool:
        """Deliver what Qt's event loop would; True once the process is over (finished or failed)."""
        if getattr(self, "_pending_start_error", False):
            self._pending_start_error = False
            self._done = True
            self._emit("errorOccurred(QProcess::ProcessError)", QProcess.FailedToStart)
            return True
        if self.popen is None or self._done:
            return True
        if self.popen.poll() is not None:
            self._finish()
            return True
        self._emit_output()
        return False

    def _finish(self) -> None:
        if self._done:
            return
        for reader in self._readers:
            reader.join(timeout=10)
        self._done = True
        self._emit_output()
        code = self.popen.returncode
        self._emit("finished(int,QProcess::ExitStatus)", code if code >= 0 else 0,
                   QProcess.NormalExit if code >= 0 else QProcess.CrashExit)

    def _emit_output(self) -> None:
        with self._lock:
            has_out, has_err = bool(self._buffers["out"]), bool(self._buffers["err"])
        if has_out:
            self._emit("readyReadStandardOutput()")
        if has_err:
            self._emit("readyReadStandardError()")

    def _emit(self, signal: str, *args) -> None:
        for slot in list(self.slots[signal]):
            slot(*args)

    def _drain(self, name: str, stream) -> None:
        for chunk in iter(lambda: stream.read1(65536), b""):
            with self._lock:
                self._buffers[name] += chunk

    def _take(self, name: str) -> _Bytes:
        with self._lock:
            data = bytes(self._buffers[name])
            self._buffers[name].clear()
        return _Bytes(data)


def run_until_finished(process: QProcess, timeout: float = 120.0) -> None:
    """Pump ``process`` until it is over; fails the test after ``timeout`` seconds."""
    run_until(process, lambda: False, timeout)


def run_until(process: QProcess, condition, timeout: float = 120.0) -> None:
    """Pump ``process`` until ``condition()`` holds or the process is over."""
    deadline = time.monotonic() + timeout
    while not process.pump() and not condition():
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"nothing happened within {timeout} s: {process.arguments}")
        time.sleep(0.05)
