"""One writer per output directory: an advisory lock held for as long as a command writes there.

The lock is `fcntl.flock` on ``<output_dir>/.spri-sft.lock``. The kernel releases it when its holder
exits, however it exits (a SIGKILL, a crash), so a lock is never left held by a dead process. The
file holds the holder's pid, host, command line and start time as JSON, which is what a second writer
quotes when it refuses::

    spri-sft: error: out/gen is being written by pid 1234 (spri-sft generate --config gen.yaml),
    started 16:52:03; wait for it or stop it

A holder that ends normally removes the file (while still holding the lock, so no newcomer can lock
a file that is about to disappear). A file that is still there with its lock free was left by a
holder that died: it is taken over, and that is said in one line.

Directories are locked one by one: a pipeline holds its run directory and each in-process stage holds
its own stage directory, so a standalone `spri-sft generate` into a running pipeline's generate/spri
refuses while the pipeline generates there. Within one process a directory may be held again (a
nested `with`), which only counts. Under a distributed launch (several ranks, one output directory)
only rank 0 takes the lock: the other ranks are the same job, not a second writer. On a filesystem
without locks (Lustre mounted without ``-o flock``, NFS without its lock daemon) the job runs, after
one line saying that nothing guards the directory.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import json
import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from spri_sft.errors import UserError

logger = logging.getLogger(__name__)

LOCK_NAME = ".spri-sft.lock"
COMMAND_CHARS = 200  # a holder's command line is quoted up to this length
HOLDER_WAIT_S = 1.0  # how long a refusal waits for a holder that has locked but not yet written who it is

# Directories this process holds: real path -> [open lock file descriptor, times held].
_held: dict[str, list[int]] = {}

Job = TypeVar("Job", bound=Callable[..., Any])


def writes_output_dir(job: Job) -> Job:
    """Decorate a job whose first argument is a config with an `output_dir`: it runs holding that directory."""

    @functools.wraps(job)
    def holding(config, *args, **kwargs):
        with hold_output_dir(config.output_dir):
            return job(config, *args, **kwargs)

    return holding  # type: ignore[return-value]


@contextlib.contextmanager
def hold_output_dir(directory: str | Path) -> Iterator[None]:
    """Hold `directory` (created if missing) for the block; raise `UserError` if another process holds it.

    A directory this creates and leaves empty (the job stopped before writing anything) is removed again.
    """
    if _is_secondary_rank():
        yield
        return
    path = Path(directory)
    created = _first_missing(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a read-only place, a file where a folder should be, no permission
        raise UserError(f"output directory {path}: cannot create it ({err.strerror or err})") from None
    key = os.path.realpath(path)
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    try:
        descriptor = _lock(path)
    except BaseException:
        _remove_if_empty(path, created)
        raise
    if descriptor is None:  # a filesystem without locks: said, and the job runs unguarded
        try:
            yield
        finally:
            _remove_if_empty(path, created)
        return
    _held[key] = [descriptor, 1]
    try:
        yield
    finally:
        del _held[key]
        _unlock(path, descriptor)
        _remove_if_empty(path, created)


def _lock(directory: Path) -> int | None:
    """The descriptor of ``directory/LOCK_NAME``, locked and naming this process; None where the filesystem
    has no locks."""
    lock_path = directory / LOCK_NAME
    while True:
        try:
            descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise UserError(f"output directory {directory}: cannot write there ({err.strerror or err})") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _wait_for_holder(descriptor)
            os.close(descriptor)
            raise UserError(f"{directory} is being written by {_describe(holder)}; wait for it or stop it") from None
        except OSError as err:  # ENOLCK, ENOSYS: e.g. Lustre mounted without -o flock, NFS without a lock daemon
            if not _read_holder(descriptor):
                lock_path.unlink(missing_ok=True)
            os.close(descriptor)
            logger.warning(
                "%s: its filesystem does not support locks (%s): nothing stops a second command writing there",
                directory,
                err.strerror or err,
            )
            return None
        try:
            same_file = os.fstat(descriptor).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        # The holder we waited on removed this file as it finished: lock the one at the path now.
        os.close(descriptor)
    previous = _read_holder(descriptor)
    if previous:
        logger.warning(
            "%s: taking over the lock of %s, which ended without releasing it (killed?)", directory, _describe(previous)
        )
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(), "started": time.time()}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, (json.dumps(me) + "\n").encode(), 0)
    return descriptor


def _unlock(directory: Path, descriptor: int) -> None:
    # Removed before it is unlocked: a newcomer that opened it meanwhile sees it gone and locks a fresh one.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(directory / LOCK_NAME)
    # LOCK_UN, not only close: a process forked from this one (a data loader worker) shares the lock.
    fcntl.flock(descriptor, fcntl.LOCK_UN)
    os.close(descriptor)


def _read_holder(descriptor: int) -> dict:
    try:
        holder = json.loads(os.pread(descriptor, 64 * 1024, 0).decode("utf-8", errors="replace"))
    except ValueError:  # empty (just created) or torn
        return {}
    return holder if isinstance(holder, dict) else {}


def _wait_for_holder(descriptor: int) -> dict:
    """Who holds the lock: a holder that has just locked writes who it is a moment later."""
    deadline = time.monotonic() + HOLDER_WAIT_S
    while not (holder := _read_holder(descriptor)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return holder


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process (it has not said which)"
    command = str(holder.get("command") or "?")
    if len(command) > COMMAND_CHARS:
        command = command[: COMMAND_CHARS - 3] + "..."
    started = ""
    if isinstance(holder.get("started"), (int, float)):
        moment = datetime.datetime.fromtimestamp(holder["started"])
        same_day = moment.date() == datetime.date.today()
        started = ", started " + moment.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S")
    host = f" on {holder['host']}" if holder.get("host") and holder["host"] != socket.gethostname() else ""
    return f"pid {holder['pid']}{host} ({command}){started}"


def _command_line() -> str:
    """This process's command as the user typed it: `spri-sft generate ...` rather than `.../spri_sft/cli.py ...`."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else sys.executable
    program = Path(argv0).name
    if program == "spri-sft" or argv0.endswith(("spri_sft/cli.py", "spri_sft/__main__.py")):
        program = "spri-sft"
    return shlex.join([program, *sys.argv[1:]])


def _is_secondary_rank() -> bool:
    """A process of a distributed launch other than rank 0 (torchrun and accelerate set RANK and LOCAL_RANK)."""
    for variable in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(variable)
        if value is not None and value.strip().isdigit():
            return int(value) != 0
    return False


def _first_missing(path: Path) -> Path | None:
    """The outermost directory of `path` that does not exist yet (None: it all exists)."""
    missing = None
    for candidate in [path, *path.parents]:
        if candidate.exists():
            break
        missing = candidate
    return missing


def _remove_if_empty(path: Path, created: Path | None) -> None:
    """Remove the directories this created on the way to `path`, innermost first, while they are empty."""
    if created is None:
        return
    for candidate in [path, *path.parents]:
        try:
            candidate.rmdir()
        except OSError:  # not empty (the job wrote there), or already gone
            return
        if candidate == created:
            return
