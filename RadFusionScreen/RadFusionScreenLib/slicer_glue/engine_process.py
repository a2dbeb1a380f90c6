"""The background engine run of the Slicer GUI: one ``QProcess``, its output, its end, its Cancel.

Inside Slicer, ``PythonSlicer`` is a CTK launcher that starts ``python-real`` as a child, and
the engine may start radiomics worker processes: killing the launcher's ``QProcess`` would leave
the interpreter and its workers running. Cancel therefore ends the whole process tree (psutil,
every platform). A process that cannot start (``errorOccurred`` with ``FailedToStart``, after
which Qt emits no ``finished``) ends the run with a message, so the busy state never sticks.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

import qt

FAILED_TO_START = 0  # QProcess::FailedToStart


@dataclass
class EngineRun:
    """What one run produced. ``error``: why it did not run or did not end normally ("" if it did)."""

    exitCode: int | None = None
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    cancelled: bool = False

    @property
    def succeeded(self) -> bool:
        return not self.error and not self.cancelled and self.exitCode == 0

    def lastErrorLine(self) -> str:
        """The engine's message: the last non-empty line of stderr (the CLI prints ``error: ...`` last)."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else self.error or f"the engine stopped (exit code {self.exitCode})"


def pythonExecutable() -> str:
    """Slicer's Python launcher (it sets up the environment) for background engine runs."""
    return shutil.which("PythonSlicer") or sys.executable


def killProcessTree(pid: int, timeout: float = 5.0) -> list[int]:
    """End process ``pid`` and every process below it; the PIDs that were ended.

    The tree is frozen first (suspended, re-listed until no new child appears) so that no
    process can start a child between listing and killing.
    """
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    frozen: dict[int, psutil.Process] = {}
    pending = [root]
    while pending:
        for process in pending:
            frozen[process.pid] = process
            try:
                process.suspend()
            except psutil.Error:
                pass
        pending = []
        for process in list(frozen.values()):
            try:
                pending += [child for child in process.children() if child.pid not in frozen]
            except psutil.Error:
                pass
    for process in frozen.values():
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(frozen.values()), timeout=timeout)
    return sorted(frozen)


class EngineProcess:
    """Runs ``program arguments`` in a ``QProcess``; calls ``onFinished(EngineRun)`` exactly once.

    ``onOutput(line)`` receives the last non-empty stderr line as progress. The finished
    ``QProcess`` is kept until the next start: it is never destroyed inside its own signal.
    """

    def __init__(self, onFinished: Callable[[EngineRun], None], onOutput: Callable[[str], None] | None = None):
        self._onFinished = onFinished
        self._onOutput = onOutput
        self._process = None
        self._previous = None
        self._run = None

    @property
    def running(self) -> bool:
        return self._process is not None

    def start(self, program: str, arguments: list[str], pythonPath: str = "", workingDirectory: str = "") -> None:
        if self._process is not None:
            raise RuntimeError("an engine run is already in progress")
        process = qt.QProcess()
        environment = qt.QProcessEnvironment.systemEnvironment()
        if pythonPath:
            existing = environment.value("PYTHONPATH")
            environment.insert("PYTHONPATH", os.pathsep.join(p for p in (pythonPath, existing) if p))
        process.setProcessEnvironment(environment)
        if workingDirectory:
            process.setWorkingDirectory(workingDirectory)
        process.connect("readyReadStandardOutput()", self._read)
        process.connect("readyReadStandardError()", self._read)
        process.connect("finished(int,QProcess::ExitStatus)", self._onProcessFinished)
        process.connect("errorOccurred(QProcess::ProcessError)", self._onProcessError)
        self._previous, self._process, self._run = None, process, EngineRun()
        process.start(program, arguments)

    def cancel(self) -> None:
        """End the run and its whole process tree; ``onFinished`` gets a cancelled run."""
        process, run = self._detach()
        if process is None:
            return
        pid = int(process.processId() or 0)
        if pid > 0:
            killProcessTree(pid)
        process.kill()
        process.waitForFinished(3000)
        run.cancelled = True
        self._onFinished(run)

    def _read(self) -> None:
        process, run = self._process, self._run
        if process is None:
            return
        run.stdout += _text(process.readAllStandardOutput())
        error = _text(process.readAllStandardError())
        if error:
            run.stderr += error
            lines = [line for line in error.splitlines() if line.strip()]
            if lines and self._onOutput is not None:
                self._onOutput(lines[-1])

    def _onProcessError(self, error) -> None:
        if self._process is not None and int(error) == FAILED_TO_START:
            self._run.error = f"the engine could not be started: {self._process.errorString()}"
            self._end()
        # other errors (crash, ...) are followed by finished(): handled there

    def _onProcessFinished(self, exitCode, exitStatus) -> None:
        self._read()
        if self._run is not None:
            self._run.exitCode = int(exitCode)
            if int(exitStatus) != 0:  # QProcess::CrashExit
                self._run.error = f"the engine crashed (exit code {exitCode})"
        self._end()

    def _end(self) -> None:
        process, run = self._detach()
        if process is not None:
            self._onFinished(run)

    def _detach(self):
        """Stop listening to the current process; (process, run), or (None, None) when idle."""
        process, run = self._process, self._run
        if process is not None:
            process.disconnect("readyReadStandardOutput()", self._read)
            process.disconnect("readyReadStandardError()", self._read)
            process.disconnect("finished(int,QProcess::ExitStatus)", self._onProcessFinished)
            process.disconnect("errorOccurred(QProcess::ProcessError)", self._onProcessError)
            self._previous, self._process, self._run = process, None, None
        return process, run


def _text(byteArray) -> str:
    """Text of a QByteArray (PythonQt returns its data as bytes)."""
    data = byteArray.data()
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)
