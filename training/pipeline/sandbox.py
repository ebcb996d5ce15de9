"""Run untrusted Python (model-written code) in a throwaway, resource-limited child process.

Limits: address space, CPU seconds, file size, process count and core dumps via setrlimit; a fresh
temporary working directory (deleted afterwards) that is also HOME; a minimal environment without
proxies; `python -I -S` so neither site-packages nor PYTHON* variables apply; a new session whose
whole process group is killed on timeout.

Networking: a preamble replaces `socket.socket`, `socket.create_connection` and
`socket.getaddrinfo` before the user code runs. That blocks ordinary Python-level networking
only; code that reaches into `_socket` or ctypes can get around it. Where the kernel allows it
(root, or unprivileged network namespaces), the child also gets an empty network namespace
(`unshare(CLONE_NEWNET)`), which blocks networking for real; otherwise that step is skipped.
This is a guard against accidents and reward-hacking shortcuts, not a security boundary for
hostile code: run the pipeline itself in a container without credentials.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLONE_NEWNET = 0x40000000
FILE_SIZE_LIMIT = 1024 * 1024
PROCESS_LIMIT = 64
OUTPUT_READ_LIMIT = 2 * FILE_SIZE_LIMIT

NETWORK_PREAMBLE = """\
def _sandbox_block_network():
    import _socket
    import socket

    def denied(*args, **kwargs):
        raise PermissionError("network access is disabled in the sandbox")

    class DeniedSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            denied()

    socket.socket = _socket.socket = DeniedSocket
    socket.create_connection = denied
    socket.getaddrinfo = _socket.getaddrinfo = denied


_sandbox_block_network()
del _sandbox_block_network
"""


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run printed and how it ended."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool


def _libc_unshare() -> Any:
    """Return libc's unshare for Pythons without os.unshare (before 3.12), or None."""
    unshare = getattr(os, "unshare", None)
    if unshare is not None:
        return unshare
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True).unshare
    except (OSError, AttributeError):
        return None


# Looked up once in the parent: preexec_fn runs between fork and exec, where loading a library
# could deadlock on a lock another thread held at fork time.
_UNSHARE = _libc_unshare()


def _capped(kind: int, value: int) -> tuple[int, int, int]:
    """(kind, soft, hard) lowered to `value` but never above the hard limit we already have."""
    _, hard = resource.getrlimit(kind)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    return kind, value, value


def _limits(timeout_s: float, memory_mb: int) -> Any:
    """Build the preexec_fn that applies rlimits and the network namespace in the child."""
    cpu = int(timeout_s) + 1
    limits = [
        _capped(resource.RLIMIT_AS, memory_mb * 1024 * 1024),
        _capped(resource.RLIMIT_CPU, cpu),
        _capped(resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT),
        _capped(resource.RLIMIT_CORE, 0),
        # Counted per user, so it only caps fork bombs for unprivileged users; root ignores it.
        _capped(resource.RLIMIT_NPROC, PROCESS_LIMIT),
    ]

    def apply() -> None:
        for kind, soft, hard in limits:
            resource.setrlimit(kind, (soft, hard))
        if _UNSHARE is not None:
            # Refused without privileges (libc returns -1, os.unshare raises): the preamble stays.
            try:
                _UNSHARE(CLONE_NEWNET)
            except OSError:
                pass

    return apply


def _read(path: Path) -> str:
    with path.open("rb") as handle:
        return handle.read(OUTPUT_READ_LIMIT).decode("utf-8", errors="replace")


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_python(source: str, *, timeout_s: float, memory_mb: int, stdin: str = "") -> SandboxResult:
    """Run `source` as a script in a sandboxed interpreter and return what it printed."""
    with tempfile.TemporaryDirectory(prefix="sandbox-", ignore_cleanup_errors=True) as tmp:
        workdir = Path(tmp)
        script = workdir / "main.py"
        script.write_text(NETWORK_PREAMBLE + "\n" + source, encoding="utf-8")
        (workdir / "stdin.txt").write_text(stdin, encoding="utf-8")
        env = {"HOME": tmp, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
        # Output goes to files, not pipes: RLIMIT_FSIZE then caps how much a child can print.
        with (
            (workdir / "stdin.txt").open("rb") as stdin_file,
            (workdir / "stdout.txt").open("wb") as out,
            (workdir / "stderr.txt").open("wb") as err,
        ):
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", str(script)],
                cwd=tmp,
                env=env,
                stdin=stdin_file,
                stdout=out,
                stderr=err,
                start_new_session=True,
                preexec_fn=_limits(timeout_s, memory_mb),
            )
            timed_out = False
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            _kill_group(process)  # also reaps children the script left running
            returncode = process.wait()
        if returncode == -signal.SIGXCPU:
            timed_out = True
        return SandboxResult(
            returncode, _read(workdir / "stdout.txt"), _read(workdir / "stderr.txt"), timed_out
        )
