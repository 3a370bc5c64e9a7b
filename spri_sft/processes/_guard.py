"""Run one child command and take its whole process group down when the parent goes away.

`spri_sft.processes.spawn_bound` starts a child (a managed vLLM server, the pipeline's training
job) as ``python _guard.py PARENT_PID GRACE_S -- COMMAND...`` in a new session, so this guard leads
a process group that the child and every worker it spawns join. The parent stops the child by
signalling that group. This guard covers the case the parent cannot:
the parent dying without cleaning up (SIGKILL, a crash). It notices in two independent ways:

* Linux `PR_SET_PDEATHSIG`: the kernel sends this process SIGTERM when its parent dies;
* its stdin is a pipe whose only writer is the parent, so reading it returns EOF once the parent is
  gone, whatever the platform.

Either way it sends SIGTERM to its group, gives the child GRACE_S seconds to exit (a trainer to
finish the checkpoint it is writing), then SIGKILLs the group (itself included), so nothing it
started outlives spri-sft.

It is run as a script, by path, with only the standard library: starting it costs no import of
spri-sft or its dependencies, and any Python 3 runs it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    # The parent may have died before prctl took effect: then nothing would ever signal us.
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)


def _signal_on_stdin_eof() -> None:
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except OSError:
        pass
    # Signal handlers run on the main thread; the shutdown lives there.
    os.kill(os.getpid(), signal.SIGTERM)


def _wait_for_exit(pid: int, timeout: float) -> None:
    # Not Popen.wait: this runs in a signal handler that may have interrupted Popen.wait, which holds
    # the lock Popen.wait needs, so it could only time out.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            return
        time.sleep(0.1)


def main(argv: list[str]) -> int:
    parent_pid, grace = int(argv[0]), float(argv[1])
    command = argv[argv.index("--") + 1 :]
    child: subprocess.Popen | None = None

    def shutdown(signum: int, frame: object) -> None:
        for stop_signal in STOP_SIGNALS:
            signal.signal(stop_signal, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)
        if child is not None:
            _wait_for_exit(child.pid, grace)
        os.killpg(0, signal.SIGKILL)  # workers the child left behind, and this guard

    # Handlers before the child starts: a stop that comes early still takes the group down.
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, shutdown)
    _die_with_parent(parent_pid)
    threading.Thread(target=_signal_on_stdin_eof, daemon=True).start()

    child = subprocess.Popen(command, stdin=subprocess.DEVNULL)
    returncode = child.wait()
    # The child ended by itself (a crash, a bad flag): its exit code is what the parent reports.
    # Its workers get SIGTERM here; the parent SIGKILLs whatever of the group is left when it cleans up.
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    return returncode if returncode >= 0 else 128 - returncode


if __name__ == "__main__":
    # os._exit, not sys.exit: the stdin reader is still blocked in read(), and a normal interpreter
    # shutdown aborts on the lock that thread holds (exit code -6 instead of the child's).
    os._exit(main(sys.argv[1:]))
