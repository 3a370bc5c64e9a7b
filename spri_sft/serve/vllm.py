"""Start vLLM's OpenAI-compatible servers, wait until they serve, and stop them without orphans.

A `VLLMServer` says what to serve and how (model, parallelism, devices, port, ...); `ManagedServers`
starts a list of them, each as ``replicas`` processes, and hands back their base URLs, which the
OpenAI-compatible backend (`spri_sft.llm.openai_http`) talks to like any other server::

    from spri_sft.serve import ManagedServers, VLLMServer

    critic = VLLMServer(model="/models/prometheus-7b", served_model_name="prometheus", replicas=2)
    with ManagedServers([critic], log_dir=output_dir) as servers:
        urls = servers.base_urls[0]    # ["http://127.0.0.1:41234/v1", "http://127.0.0.1:41235/v1"]
        ...                            # requests go to `critic.name` at those URLs

What it guarantees:

* **Health before use.** `start` (and entering the context) returns once every process answers
  ``GET /health``, logging one line per server when it starts and when it is ready (and one a minute
  while it loads). A server that exits first or is not up within ``startup_timeout`` stops them
  all and raises `UserError`, one line quoting the end of its log.
* **Logs in the output directory.** Each process writes ``<log_dir>/vllm-<name>-<replica>.log``,
  appended to, under a header with its command line.
* **Never an orphan.** Every server runs under a small guard (`spri_sft.processes.spawn_bound`)
  that leads its own process group, so stopping a server stops every worker vLLM spawned. Servers stop on context
  exit, on any exception or Ctrl-C inside it, at interpreter exit (`atexit`), on SIGTERM and SIGHUP
  to this process (handlers installed while servers run, when started from the main thread; they
  stop the servers, then hand the signal to the handler that was there before, or die of it), and
  when this process is SIGKILLed (the guard notices its parent is gone). `ManagedServers` must be
  started from the thread that will outlive the servers: Linux signals a guard when the *thread*
  that started it ends.
* **Loopback unless asked.** Servers listen on 127.0.0.1 (vLLM's own default is every interface).
  A server bound to another interface needs ``api_key_env``: the name of an environment variable
  holding the key. The key reaches vLLM as its ``VLLM_API_KEY`` environment variable (the same as
  ``--api-key``), never on a command line (which any user of the node can read in ``ps``), a log
  or a file. Clients read it from the same variable (`EndpointConfig.api_key_env`).
* **One server per distinct config.** Configs that are equal (same model and settings) are started
  once and share their URLs, so a base and a critic naming the same model share a server.
* **A CPU server leaves the machine usable.** vLLM's CPU build would take 0.9 of the RAM for its KV
  cache; unless the user sizes it, each server gets what its ``requests_in_flight`` can fill, within
  a quarter of the RAM, said in one line (`spri_sft.serve.kv_cache`). A GPU build is left alone.

Which vLLM runs: ``command`` when set (e.g. ``["vllm", "serve"]`` or a wrapper), else ``python -m
vllm.entrypoints.openai.api_server`` with ``python`` when set, else ``.venv-vllm/bin/python`` (built
by ``bash scripts/setup.sh --vllm``, in the working directory or the spri-sft checkout), else this
interpreter if it has vLLM installed.
"""

from __future__ import annotations

import atexit
import importlib.util
import ipaddress
import logging
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from spri_sft.errors import UserError
from spri_sft.processes import signal_group, spawn_bound
from spri_sft.serve.kv_cache import (
    KV_CACHE_FLAGS,
    KV_CACHE_VAR,
    KVCacheSize,
    machine_ram_bytes,
    read_model_config,
    size_kv_cache,
)

logger = logging.getLogger(__name__)

VLLM_ENTRYPOINT = ["-m", "vllm.entrypoints.openai.api_server"]
VLLM_VENV = ".venv-vllm"
SETUP_HINT = "build it with `bash scripts/setup.sh --vllm`, or set the server's python or command"
# Environment variable vLLM reads its API key from; equivalent to --api-key.
VLLM_API_KEY_VAR = "VLLM_API_KEY"
WILDCARD_HOSTS = ("", "0.0.0.0", "::")
HEALTH_POLL_S = 1.0
PROGRESS_EVERY_S = 60.0
LOG_TAIL_LINES = 3
LOG_TAIL_CHARS = 400
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclass
class VLLMServer:
    """One model served by vLLM, as one or more identical processes (replicas).

    What it serves: model, served_model_name, dtype, max_model_len. Where it runs: devices,
    tensor_parallel_size, gpu_memory_utilization, replicas. Where it listens: host, port,
    api_key_env. Which vLLM: command, python, env, extra_args. When to give up: startup_timeout.
    """

    model: str = field(default="", metadata={"help": "Model directory or Hub id, passed as vLLM's --model."})
    served_model_name: str | None = field(
        default=None, metadata={"help": "Name clients request; null = the model string."}
    )
    tensor_parallel_size: int = field(default=1, metadata={"help": "GPUs one replica spans.", "ge": 1})
    gpu_memory_utilization: float | None = field(
        default=None,
        metadata={
            "help": "Fraction of each GPU's memory vLLM may take (vLLM's CPU build: of the RAM, instead of the KV "
            "cache spri-sft sizes); null = vLLM's default.",
            "gt": 0,
            "le": 1,
        },
    )
    devices: str | None = field(
        default=None,
        metadata={
            "help": "CUDA_VISIBLE_DEVICES, e.g. '0,1'. With replicas it lists tensor_parallel_size * replicas "
            "devices, split in order: replica 0 takes the first tensor_parallel_size. null = inherit."
        },
    )
    max_model_len: int | None = field(
        default=None, metadata={"help": "Context length; null = the model's own.", "ge": 1}
    )
    dtype: str | None = field(default=None, metadata={"help": "vLLM --dtype ('bfloat16', ...); null = vLLM's 'auto'."})
    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Interface to listen on. Anything but loopback needs api_key_env."},
    )
    port: int | None = field(
        default=None,
        metadata={"help": "Port of replica 0; replica i listens on port + i. null = free ports.", "ge": 1, "le": 65535},
    )
    api_key_env: str | None = field(
        default=None,
        metadata={"help": "Environment variable holding the API key the server requires; needed off loopback."},
    )
    extra_args: list[str] = field(
        default_factory=list, metadata={"help": "More vLLM command-line arguments, e.g. ['--enable-prefix-caching']."}
    )
    env: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "Extra environment for the server, e.g. {VLLM_CPU_KVCACHE_SPACE: 2}: GiB of KV cache on vLLM's "
            "CPU build (unset, spri-sft sizes it to max_model_len x the requests in flight, at most 1/4 of the RAM)."
        },
    )
    python: str | None = field(
        default=None, metadata={"help": "Python with vLLM installed; null = .venv-vllm/bin/python (see setup.sh)."}
    )
    command: list[str] = field(
        default_factory=list,
        metadata={"help": "Command starting vLLM's server, instead of 'python -m vllm.entrypoints.openai.api_server'."},
    )
    replicas: int = field(
        default=1, metadata={"help": "Identical server processes; requests are spread over them.", "ge": 1}
    )
    startup_timeout: float = field(
        default=1800.0, metadata={"help": "Seconds a replica may take to answer /health.", "gt": 0}
    )

    @property
    def name(self) -> str:
        """The model name clients put in their requests."""
        return self.served_model_name or self.model

    def check(self) -> None:
        """Raise `UserError` for a config that cannot start (before anything is started)."""
        if not self.model:
            raise UserError("vLLM server: 'model' is required")
        if self.devices is not None and self.replicas > 1:
            count = len(_split_devices(self.devices))
            needed = self.tensor_parallel_size * self.replicas
            if count != needed:
                raise UserError(
                    f"vLLM server {self.name!r}: devices {self.devices!r} lists {count} devices; "
                    f"{self.replicas} replicas of tensor_parallel_size {self.tensor_parallel_size} need {needed}"
                )
        if not is_loopback(self.host) and not self.api_key_env:
            raise UserError(
                f"vLLM server {self.name!r}: host {self.host!r} is reachable from other machines; "
                "set api_key_env to the environment variable holding the API key it should require"
            )
        if self.api_key_env and not os.environ.get(self.api_key_env):
            raise UserError(f"vLLM server {self.name!r}: api_key_env names ${self.api_key_env}, which is not set")

    def launcher(self) -> list[str]:
        """The command line that starts vLLM's OpenAI-compatible server, before its arguments."""
        if self.command:
            return list(self.command)
        if self.python:
            return [self.python, *VLLM_ENTRYPOINT]
        for root in _venv_roots():
            venv_python = root / VLLM_VENV / "bin" / "python"
            if venv_python.exists():
                return [str(venv_python), *VLLM_ENTRYPOINT]
        if importlib.util.find_spec("vllm") is not None:
            return [sys.executable, *VLLM_ENTRYPOINT]
        raise UserError(
            f"vLLM server {self.name!r}: no {VLLM_VENV} environment and no vllm in this Python; {SETUP_HINT}"
        )

    def arguments(self, port: int) -> list[str]:
        """vLLM's command-line arguments for a replica listening on `port` (never the API key)."""
        args = ["--model", self.model, "--host", self.host, "--port", str(port)]
        if self.served_model_name:
            args += ["--served-model-name", self.served_model_name]
        if self.tensor_parallel_size != 1:
            args += ["--tensor-parallel-size", str(self.tensor_parallel_size)]
        if self.gpu_memory_utilization is not None:
            args += ["--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        if self.max_model_len is not None:
            args += ["--max-model-len", str(self.max_model_len)]
        if self.dtype is not None:
            args += ["--dtype", self.dtype]
        return args + list(self.extra_args)

    def kv_cache_set_by_user(self) -> str | None:
        """How the user sized vLLM's CPU KV cache (the env var, here or inherited, or a vLLM flag), or None."""
        if self.gpu_memory_utilization is not None:
            return "gpu_memory_utilization"
        if KV_CACHE_VAR in self.env or os.environ.get(KV_CACHE_VAR):
            return KV_CACHE_VAR
        flags = [arg.split("=", 1)[0] for arg in self.extra_args]
        return next((flag for flag in KV_CACHE_FLAGS if flag in flags), None)

    def replica_devices(self) -> list[str | None]:
        """CUDA_VISIBLE_DEVICES of each replica (None: inherited)."""
        if self.devices is None:
            return [None] * self.replicas
        if self.replicas == 1:
            return [self.devices]
        ids = _split_devices(self.devices)
        size = self.tensor_parallel_size
        return [",".join(ids[i * size : (i + 1) * size]) for i in range(self.replicas)]


def _venv_roots() -> list[Path]:
    """Where `.venv-vllm` may be: the working directory, then the spri-sft checkout."""
    return [Path.cwd(), Path(__file__).resolve().parents[2]]


def is_loopback(host: str) -> bool:
    """Whether `host` accepts connections from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a hostname: it may resolve to any interface


def client_host(host: str) -> str:
    """The address a client on this machine connects to for a server listening on `host`."""
    if host in WILDCARD_HOSTS:
        return "127.0.0.1"
    if ":" in host:
        return f"[{host}]"
    return host


def _split_devices(devices: str) -> list[str]:
    return [d.strip() for d in devices.split(",") if d.strip()]


def _free_port(host: str, taken: set[int]) -> int:
    """A port nothing listens on now. vLLM binds it a moment later; another process could take it
    first, and then the server exits with 'address already in use' in its log."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    bind_host = "" if host in WILDCARD_HOSTS else host
    while True:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.bind((bind_host, 0))
            port = probe.getsockname()[1]
        if port not in taken:
            return port


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(text.rstrip("/")).name or text).strip("_") or "model"


def _log_tail(path: Path, offset: int) -> str:
    """The last lines this run wrote to a server log, joined into one line."""
    try:
        with open(path, "rb") as log:
            log.seek(offset)
            text = log.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    tail = " | ".join(lines[-LOG_TAIL_LINES:]) or "(empty log)"
    return tail if len(tail) <= LOG_TAIL_CHARS else "..." + tail[-LOG_TAIL_CHARS:]


@dataclass
class _Process:
    """One running replica: its guard process (leader of the server's process group) and log."""

    server: VLLMServer
    replica: int
    port: int
    url: str
    log_path: Path
    log_offset: int
    popen: subprocess.Popen
    parent_pipe: IO[bytes]  # the guard's stdin; closing it (or dying) tells the guard to stop the server
    started_at: float

    @property
    def label(self) -> str:
        suffix = f" replica {self.replica}" if self.server.replicas > 1 else ""
        return f"vLLM server {self.server.name!r}{suffix}"

    def health_url(self) -> str:
        return f"http://{client_host(self.server.host)}:{self.port}/health"


class ManagedServers:
    """Start `servers` (a list of `VLLMServer`), wait for them, and stop them however this process ends.

    Use it as a context manager, which returns itself, or call `start` and `stop`. After `start`,
    ``base_urls[i]`` lists the ``http://HOST:PORT/v1`` URL of each replica of ``servers[i]``.
    `check_alive` raises `UserError` if a server died since.
    """

    def __init__(
        self,
        servers: Sequence[VLLMServer],
        log_dir: str | Path,
        *,
        stop_timeout: float = 15.0,
        requests_in_flight: Sequence[int | None] | None = None,
    ) -> None:
        """
        Args:
            servers: what to serve; equal configs share one set of processes.
            log_dir: directory for the server logs (created if missing), e.g. the run's output dir.
            stop_timeout: seconds a server gets to exit after SIGTERM before its group is SIGKILLed.
            requests_in_flight: per server, the most requests one of its processes will have at once
                (None: unknown); it sizes a CPU build's KV cache (`spri_sft.serve.kv_cache`).
        """
        self.servers = list(servers)
        self.log_dir = Path(log_dir)
        self.stop_timeout = stop_timeout
        self.requests_in_flight = list(requests_in_flight or [None] * len(self.servers))
        if len(self.requests_in_flight) != len(self.servers):
            raise ValueError("ManagedServers: requests_in_flight needs one entry per server")
        # After `start`: per server, the KV cache spri-sft gave it on the CPU (None: the user's or vLLM's own).
        self.kv_caches: list[KVCacheSize | None] = []
        self.base_urls: list[list[str]] = []
        self._processes: list[_Process] = []
        self._previous_handlers: dict[int, object] = {}
        self._lock = threading.RLock()

    # -- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> ManagedServers:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> ManagedServers:
        """Start every server and return once all answer /health; on failure stop them all and raise."""
        if self._processes:
            raise RuntimeError("ManagedServers.start: the servers are already running")
        for server in self.servers:
            server.check()
        distinct: list[VLLMServer] = []
        for server in self.servers:
            if server not in distinct:
                distinct.append(server)
        launchers = [server.launcher() for server in distinct]  # fails before anything starts
        kv_sizes = self._size_kv_caches(distinct, launchers)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        atexit.register(self.stop)
        self._install_signal_handlers()
        try:
            urls_of: list[list[str]] = []
            for server, launcher, size in zip(distinct, launchers, kv_sizes):
                spawned = self._spawn(server, launcher, distinct, size)
                urls_of.append([process.url for process in spawned])
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        self.base_urls = [urls_of[distinct.index(server)] for server in self.servers]
        self.kv_caches = [kv_sizes[distinct.index(server)] for server in self.servers]
        return self

    def stop(self) -> None:
        """Stop every server started (SIGTERM to its group, SIGKILL after stop_timeout). Idempotent."""
        with self._lock:
            processes, self._processes = self._processes, []
            for process in processes:
                signal_group(process.popen.pid, signal.SIGTERM)
            deadline = time.monotonic() + self.stop_timeout
            for process in processes:
                try:
                    process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
                # The guard is gone (or late): whatever is left of its group goes now.
                signal_group(process.popen.pid, signal.SIGKILL)
                process.popen.wait()
                process.parent_pipe.close()
            if processes:
                logger.info("stopped %d vLLM server process(es)", len(processes))
            self.base_urls = []
            self._restore_signal_handlers()
            atexit.unregister(self.stop)

    def check_alive(self) -> None:
        """Raise `UserError` naming the first server that has exited, with the end of its log."""
        for process in self._processes:
            returncode = process.popen.poll()
            if returncode is not None:
                raise UserError(
                    f"{process.label} exited with code {returncode} (log: {process.log_path}): "
                    f"{_log_tail(process.log_path, process.log_offset)}"
                )

    @property
    def pids(self) -> list[int]:
        """Process-group ids of the running replicas (each the pid of the server's guard)."""
        return [process.popen.pid for process in self._processes]

    # -- starting ----------------------------------------------------------------------------------

    def _size_kv_caches(self, distinct: list[VLLMServer], launchers: list[list[str]]) -> list[KVCacheSize | None]:
        """The KV cache of each distinct server on vLLM's CPU build, said in one line; None where the
        user sized it or the build runs on a GPU (where gpu_memory_utilization of the GPU's own memory is right).
        The servers started here share `RAM_SHARE` of the RAM, each process an equal part."""
        builds = [_vllm_build(server, launcher) for server, launcher in zip(distinct, launchers)]
        sized = [server.kv_cache_set_by_user() is None and build != "gpu" for server, build in zip(distinct, builds)]
        processes = sum(server.replicas for server, size_it in zip(distinct, sized) if size_it)
        ram = machine_ram_bytes() if processes else 0
        sizes: list[KVCacheSize | None] = []
        for server, build, size_it in zip(distinct, builds, sized):
            if not size_it:
                sizes.append(None)
                continue
            in_flight = [n for s, n in zip(self.servers, self.requests_in_flight) if s == server and n is not None]
            sequences, sequences_from = (max(in_flight), "requests in flight") if in_flight else (None, None)
            max_num_seqs = _flag_value(server.extra_args, "--max-num-seqs")  # vLLM queues the rest
            if max_num_seqs and max_num_seqs.isdigit() and (sequences is None or int(max_num_seqs) < sequences):
                sequences, sequences_from = int(max_num_seqs), "--max-num-seqs"
            kv_cache_dtype = _flag_value(server.extra_args, "--kv-cache-dtype")
            size = size_kv_cache(
                read_model_config(server.model),
                sequences=sequences,
                sequences_from=sequences_from,
                max_model_len=server.max_model_len,
                dtype=kv_cache_dtype if kv_cache_dtype not in (None, "auto") else server.dtype,
                ram_bytes=ram,
                processes=processes,
            )
            build_note = "" if build == "cpu" else " (read by vLLM's CPU build only)"
            logger.info("vLLM server %r: %s%s", server.name, size.describe(), build_note)
            sizes.append(size)
        return sizes

    def _spawn(
        self, server: VLLMServer, launcher: list[str], distinct: list[VLLMServer], kv_cache: KVCacheSize | None
    ) -> list[_Process]:
        taken = {process.port for process in self._processes}
        slug = _slug(server.name)
        if sum(_slug(other.name) == slug for other in distinct) > 1:
            slug += f"-{distinct.index(server)}"
        spawned = []
        for replica, devices in enumerate(server.replica_devices()):
            port = server.port + replica if server.port is not None else _free_port(server.host, taken)
            taken.add(port)
            command = launcher + server.arguments(port)
            log_path = self.log_dir / f"vllm-{slug}-{replica}.log"
            with open(log_path, "ab") as log:
                log_offset = log.tell()
                header = f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} spri-sft starts: {shlex.join(command)}\n"
                if kv_cache is not None:
                    header += f"=== {KV_CACHE_VAR}={kv_cache.gib}: {kv_cache.describe()}\n"
                log.write(header.encode())
                log.flush()
                popen = spawn_bound(
                    command,
                    self.stop_timeout,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=_server_env(server, devices, {KV_CACHE_VAR: str(kv_cache.gib)} if kv_cache else None),
                )
            assert popen.stdin is not None
            process = _Process(
                server=server,
                replica=replica,
                port=port,
                url=f"http://{client_host(server.host)}:{port}/v1",
                log_path=log_path,
                log_offset=log_offset,
                popen=popen,
                parent_pipe=popen.stdin,
                started_at=time.monotonic(),
            )
            self._processes.append(process)
            spawned.append(process)
        ports = ", ".join(str(process.port) for process in spawned)
        logs = spawned[0].log_path if len(spawned) == 1 else self.log_dir / f"vllm-{slug}-*.log"
        logger.info(
            "starting vLLM server %r on %s port %s (log: %s); waiting for health", server.name, server.host, ports, logs
        )
        return spawned

    def _wait_until_healthy(self) -> None:
        waiting = list(self._processes)
        last_progress = time.monotonic()
        while waiting:
            for process in list(waiting):
                elapsed = time.monotonic() - process.started_at
                returncode = process.popen.poll()
                if returncode is not None:
                    raise UserError(
                        f"{process.label} exited with code {returncode} before it was ready "
                        f"(log: {process.log_path}): {_log_tail(process.log_path, process.log_offset)}"
                    )
                if _healthy(process.health_url()):
                    logger.info("%s ready at %s after %.0f s", process.label, process.url, elapsed)
                    waiting.remove(process)
                elif elapsed > process.server.startup_timeout:
                    raise UserError(
                        f"{process.label} did not answer /health within {process.server.startup_timeout:.0f} s "
                        f"(log: {process.log_path}): {_log_tail(process.log_path, process.log_offset)}"
                    )
            if waiting and time.monotonic() - last_progress >= PROGRESS_EVERY_S:
                last_progress = time.monotonic()
                first = waiting[0]
                logger.info(
                    "still waiting for %d vLLM server process(es) (%.0f s); %s: %s",
                    len(waiting),
                    time.monotonic() - first.started_at,
                    first.label,
                    _log_tail(first.log_path, first.log_offset),
                )
            if waiting:
                time.sleep(HEALTH_POLL_S)

    # -- signals -----------------------------------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # only the main thread may set handlers; atexit and the guards still cover the rest
        for signum in STOP_SIGNALS:
            previous = signal.getsignal(signum)
            if previous is signal.SIG_IGN:
                continue  # this process outlives that signal, and so should its servers
            self._previous_handlers[signum] = previous
            signal.signal(signum, self._on_stop_signal)

    def _restore_signal_handlers(self) -> None:
        for signum, previous in self._previous_handlers.items():
            # A handler installed after ours stays: it is the one in charge now.
            if signal.getsignal(signum) == self._on_stop_signal:
                signal.signal(signum, previous)
        self._previous_handlers = {}

    def _on_stop_signal(self, signum: int, frame: FrameType | None) -> None:
        previous = self._previous_handlers.get(signum, signal.SIG_DFL)
        logger.info("signal %d: stopping the vLLM servers", signum)
        self.stop()
        if callable(previous):
            previous(signum, frame)
        elif previous in (signal.SIG_DFL, None):
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def _server_env(server: VLLMServer, devices: str | None, kv_env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    # An inherited key would lock out clients that were not told about it.
    env.pop(VLLM_API_KEY_VAR, None)
    env.update(kv_env or {})  # the sized KV cache; the server's own env, set by the user, comes after
    env.update({name: str(value) for name, value in server.env.items()})  # YAML may give `2`, not "2"
    env["PYTHONUNBUFFERED"] = "1"  # log lines as they happen, so a failure's tail is in the log
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = devices
    if server.api_key_env:
        env[VLLM_API_KEY_VAR] = os.environ[server.api_key_env]
    return env


# vLLM's own platform rule (vllm.platforms.cpu_platform_plugin), read from the environment's package
# metadata without importing vLLM (seconds): VLLM_TARGET_DEVICE=cpu, a `vllm` whose version says "cpu", the
# `vllm-cpu` distribution, or macOS.
_BUILD_PROBE = """
import os, sys
from importlib.metadata import PackageNotFoundError, version
def find(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None
vllm, vllm_cpu = find("vllm"), find("vllm-cpu")
if os.environ.get("VLLM_TARGET_DEVICE", "cuda").lower() == "cpu" or sys.platform == "darwin":
    print("cpu")
elif vllm is not None:
    print("cpu" if "cpu" in vllm else "gpu")
else:
    print("cpu" if vllm_cpu is not None else "none")
"""


def _vllm_build(server: VLLMServer, launcher: list[str]) -> str | None:
    """'cpu' or 'gpu': the build of vLLM the server's Python has; None when it cannot be told (a `command`)."""
    if server.command or launcher[1:] != VLLM_ENTRYPOINT:
        return None
    try:
        probe = subprocess.run(
            [launcher[0], "-c", _BUILD_PROBE],
            env=_server_env(server, None),
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    build = probe.stdout.strip()
    return build if build in ("cpu", "gpu") else None


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value `args` give `flag` ('--flag value' or '--flag=value'; the last one wins, as in argparse)."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
    return value


# No proxy: an http_proxy from the environment must not carry a health check of this machine's port.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2.0) as reply:
            return reply.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
