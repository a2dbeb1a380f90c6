"""The Slicer GUI's background engine: one warm ``QProcess``, its requests, its end, its Cancel.

Inside Slicer, ``PythonSlicer`` is a CTK launcher that starts ``python-real`` as a child, and
the engine may start radiomics worker processes: killing the launcher's ``QProcess`` would leave
the interpreter and its workers running. Cancel therefore ends the whole process tree (psutil,
every platform). A process that cannot start (``errorOccurred`` with ``FailedToStart``, after
which Qt emits no ``finished``) or that ends during a request ends the request with a
message, so the busy state never sticks. The engine is ``radfusion serve``
(:mod:`RadFusionScreenLib.app.engine_server`): started once, it keeps the bundles loaded, so only
the first Analyze pays the imports and the model loading.
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
        """Why it failed: the process's fate, else the last line of stderr (the CLI prints ``error: ...`` last)."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return self.error or (lines[-1] if lines else f"the engine stopped (exit code {self.exitCode})")


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


class EngineServer:
    """The warm engine (``python -m RadFusionScreenLib serve``) in a ``QProcess``.

    Started once (:meth:`start`), it keeps the bundles loaded; :meth:`request` sends one case
    (the ``screen`` command's arguments) and ``onFinished(EngineRun)`` is called exactly once
    per request, with what that command would have printed and returned. ``onOutput(line)``
    receives the engine's messages as progress. Cancel ends the request and, since a case
    cannot be stopped halfway, the whole process tree; the next request starts a new engine.
    An ended ``QProcess`` is kept until the next start: it is never destroyed inside its own
    signal.
    """

    def __init__(self, onFinished: Callable[[EngineRun], None], onOutput: Callable[[str], None] | None = None):
        self._onFinished = onFinished
        self._onOutput = onOutput
        self._process = None
        self._previous = None
        self._run = None  # the request in flight
        self._requestId = 0
        self._stdout = ""
        self._stderr = ""

    @property
    def alive(self) -> bool:
        """The engine process is started (and not known to have ended)."""
        return self._process is not None

    @property
    def busy(self) -> bool:
        """A request is in flight."""
        return self._run is not None

    def start(self, program: str, arguments: list[str], pythonPath: str = "", workingDirectory: str = "") -> None:
        """Start the engine process (``program arguments``), unless it is already running."""
        if self._process is not None:
            return
        process = qt.QProcess()
        environment = qt.QProcessEnvironment.systemEnvironment()
        if pythonPath:
            existing = environment.value("PYTHONPATH")
            environment.insert("PYTHONPATH", os.pathsep.join(p for p in (pythonPath, existing) if p))
        process.setProcessEnvironment(environment)
        if workingDirectory:
            process.setWorkingDirectory(workingDirectory)
        process.connect("readyReadStandardOutput()", self._readOutput)
        process.connect("readyReadStandardError()", self._readErrors)
        process.connect("finished(int,QProcess::ExitStatus)", self._onProcessFinished)
        process.connect("errorOccurred(QProcess::ProcessError)", self._onProcessError)
        self._previous, self._process, self._stdout, self._stderr = None, process, "", ""
        process.start(program, arguments)

    def request(self, arguments: list[str]) -> None:
        """Screen one case; the engine must be started and idle."""
        from RadFusionScreenLib.serving.engine_protocol import encode_request

        if self._process is None:
            raise RuntimeError("the engine is not started")
        if self._run is not None:
            raise RuntimeError("a case is already being screened")
        self._requestId += 1
        self._run, self._stderr = EngineRun(), ""
        self._process.write(qt.QByteArray(encode_request(self._requestId, arguments)))

    def cancel(self) -> None:
        """End the request in flight, if any (``onFinished`` gets a cancelled run), and with it the
        engine's process tree: a case cannot be stopped halfway."""
        run, self._run = self._run, None
        if run is None:
            return
        self._kill()
        run.cancelled = True
        self._onFinished(run)

    def stop(self) -> None:
        """End the engine and every process below it (module cleanup, application exit)."""
        self.cancel()
        self._kill()

    def _kill(self) -> None:
        process = self._detach()
        if process is None:
            return
        pid = int(process.processId() or 0)
        if pid > 0:
            killProcessTree(pid)
        process.kill()
        process.waitForFinished(3000)

    def _readOutput(self) -> None:
        from RadFusionScreenLib.serving.engine_protocol import decode_response

        if self._process is None:
            return
        self._stdout += _text(self._process.readAllStandardOutput())
        *lines, self._stdout = self._stdout.split("\n")
        for line in lines:
            response = decode_response(line)
            if response is None or self._run is None or response["id"] != self._requestId:
                continue
            run, self._run = self._run, None
            run.exitCode, run.stdout, run.stderr = int(response["exit_code"]), response["stdout"], response["stderr"]
            self._onFinished(run)

    def _readErrors(self) -> None:
        if self._process is None:
            return
        text = _text(self._process.readAllStandardError())
        self._stderr += text
        lines = [line for line in text.splitlines() if line.strip()]
        if lines and self._run is not None and self._onOutput is not None:
            self._onOutput(lines[-1])

    def _onProcessError(self, error) -> None:
        if self._process is not None and int(error) == FAILED_TO_START:
            self._ended(f"the engine could not be started: {self._process.errorString()}")
        # other errors (crash, ...) are followed by finished(): handled there

    def _onProcessFinished(self, exitCode, exitStatus) -> None:
        self._readOutput()
        self._readErrors()
        how = "crashed" if int(exitStatus) != 0 else "stopped"  # QProcess::CrashExit is 1
        self._ended(f"the engine {how} (exit code {exitCode})")

    def _ended(self, reason: str) -> None:
        """The process is gone: a request in flight fails with ``reason`` and the engine's messages."""
        stderr = self._stderr
        self._detach()
        run, self._run = self._run, None
        if run is not None:
            run.error, run.stderr = reason, stderr
            self._onFinished(run)

    def _detach(self):
        """Stop listening to the engine process; the process, or None when there is none."""
        process = self._process
        if process is not None:
            process.disconnect("readyReadStandardOutput()", self._readOutput)
            process.disconnect("readyReadStandardError()", self._readErrors)
            process.disconnect("finished(int,QProcess::ExitStatus)", self._onProcessFinished)
            process.disconnect("errorOccurred(QProcess::ProcessError)", self._onProcessError)
            self._previous, self._process = process, None
        return process


def _text(byteArray) -> str:
    """Text of a QByteArray (PythonQt returns its data as bytes)."""
    data = byteArray.data()
    return data.decode(errors="replace") if isinstance(data, bytes) else str(data)
