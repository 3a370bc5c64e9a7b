"""Children bound to this process: they lead their own process group and die with it.

`spawn_bound` starts a command under the guard (`_guard.py`, run by path with the standard library
alone), in a new session: the guard leads a process group that the command and everything it
spawns join (accelerate's ranks, data loader workers, vLLM's workers). The guard stops that group
when this process dies, however it dies: the kernel's parent-death signal, and EOF on its stdin,
a pipe only this process writes. So a SIGKILLed pipeline leaves no trainer writing checkpoints
behind it, and no vLLM server holding GPUs.

`run_bound` runs such a child to its end, as `subprocess.call` would, and stops it on the way out
when this process is stopped first (Ctrl-C, SIGTERM as `Terminated`, an error): SIGTERM, `grace`
seconds to finish what it is writing, then SIGKILL of the whole group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GUARD_SCRIPT = Path(__file__).with_name("_guard.py")
QUICK_STOP_S = 2.0  # a stopped child that takes longer than this is said to be waited for
GUARD_MARGIN_S = 5.0  # beyond the grace: the guard SIGKILLs at grace, this process only if the guard is stuck


def spawn_bound(command: Sequence[str], grace: float, **popen_kwargs: Any) -> subprocess.Popen:
    """Start `command` under the guard and return the guard's Popen (its pid is the group's id).

    `grace`: seconds the command gets to exit after SIGTERM before its group is SIGKILLed. The
    Popen's stdin is the pipe that tells the guard this process is gone; keep it open while the
    child should run. Other keyword arguments go to Popen (stdout, env, ...). Call from the thread
    that outlives the child: Linux sends the parent-death signal when the starting *thread* ends.
    """
    guard = [sys.executable, str(GUARD_SCRIPT), str(os.getpid()), str(grace), "--", *command]
    # Its own session: out of reach of the terminal's Ctrl-C, which this process handles and passes on.
    return subprocess.Popen(guard, stdin=subprocess.PIPE, start_new_session=True, **popen_kwargs)


def run_bound(command: Sequence[str], grace: float, **popen_kwargs: Any) -> int:
    """Run `command` bound to this process and return its exit status (128 + N when signal N ended it).

    When this process is interrupted while it waits (KeyboardInterrupt, `Terminated`, any exception),
    the child is stopped (SIGTERM, then SIGKILL after `grace` seconds, sooner at a second Ctrl-C)
    before the exception goes on.
    """
    child = spawn_bound(command, grace, **popen_kwargs)
    try:
        return child.wait()
    except BaseException:
        stop_bound(child, grace)
        raise
    finally:
        if child.stdin is not None:
            child.stdin.close()


def stop_bound(child: subprocess.Popen, grace: float) -> None:
    """Stop a child `spawn_bound` started: SIGTERM to its guard, which passes it on to the group and
    SIGKILLs it after `grace` seconds; SIGKILL from here too if the guard is late or we are interrupted again."""
    # The guard alone: it signals the group itself, so the child gets one SIGTERM, not two.
    try:
        os.kill(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        try:
            child.wait(timeout=QUICK_STOP_S)
        except subprocess.TimeoutExpired:  # busy (saving a checkpoint?): say what we wait for, and how not to
            print(
                f"[spri-sft] stopping child process {child.pid}: up to {grace:.0f} s for it to finish what it "
                "writes; Ctrl-C again to kill it now",
                file=sys.stderr,
                flush=True,
            )
            child.wait(timeout=grace + GUARD_MARGIN_S)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        pass
    finally:
        signal_group(child.pid, signal.SIGKILL)  # whatever of the group is left
        child.wait()


def signal_group(pgid: int, signum: int) -> None:
    """Send `signum` to process group `pgid`; nothing if the group is gone."""
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass
