"""Managed vLLM servers: started, health-checked, logged, and never left behind.

The fast tests put `support.fake_vllm_server` (the fake OpenAI server behind vLLM's command
line) where vLLM would run, so every process-handling path is real. The `vllm` tests start the real
CPU build from `.venv-vllm` (`bash scripts/setup.sh --vllm`) serving SmolLM2-135M-Instruct, and are
skipped where that environment is missing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import openai
import psutil
import pytest

from spri_sft.errors import UserError
from spri_sft.serve import ManagedServers, VLLMServer
from spri_sft.serve import vllm as serve_vllm
from spri_sft.serve.kv_cache import GIB, KVShape, read_model_config

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc to find processes")

FAKE_VLLM = [sys.executable, "-m", "support.fake_vllm_server"]
REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
GONE_WITHIN_S = 30.0  # how long a test waits for processes to disappear before it fails


def fake_server(**overrides) -> VLLMServer:
    return VLLMServer(**{"model": "fake/model", "served_model_name": "fake", "command": FAKE_VLLM, **overrides})


def exits_at_once(message: str, code: int) -> VLLMServer:
    script = f"import sys; print({message!r}, flush=True); sys.exit({code})"
    return VLLMServer(model="fake/model", command=[sys.executable, "-c", script])


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited; only its exit status is left to collect


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, found through the parent pids in /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found and alive(child):
                found.add(child)
                stack.append(child)
    return found


def wait_until_gone(pids: set[int]) -> set[int]:
    """The pids still alive after up to GONE_WITHIN_S seconds."""
    deadline = time.monotonic() + GONE_WITHIN_S
    while (left := {pid for pid in pids if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def fake_pids(log_dir: Path) -> set[int]:
    """The pids the fake servers wrote into their logs."""
    text = "".join(path.read_text() for path in log_dir.glob("vllm-*.log"))
    return {int(pid) for pid in re.findall(r"fake vLLM pid (\d+)", text)}


# -- starting ---------------------------------------------------------------------------------------


def test_start_returns_once_the_server_answers_and_its_url_serves_chat(tmp_path):
    with ManagedServers([fake_server()], log_dir=tmp_path) as servers:
        [[url]] = servers.base_urls
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", url)
        reply = openai.OpenAI(base_url=url, api_key="EMPTY").chat.completions.create(
            model="fake", messages=[{"role": "user", "content": "hello there"}]
        )
    assert reply.choices[0].message.content == "Reply to: hello there"


def test_each_replica_gets_its_own_port_and_log(tmp_path):
    with ManagedServers([fake_server(replicas=2)], log_dir=tmp_path) as servers:
        urls = servers.base_urls[0]
    assert len(set(urls)) == 2
    logs = sorted(path.name for path in tmp_path.iterdir())
    assert logs == ["vllm-fake-0.log", "vllm-fake-1.log"]
    for log, url in zip(logs, urls):
        port = url.rsplit(":", 1)[1].removesuffix("/v1")
        text = (tmp_path / log).read_text()
        assert f"--port {port}" in text.splitlines()[0]  # the header holds the command line
        assert "listening on" in text


def test_equal_configs_share_one_server(tmp_path):
    with ManagedServers([fake_server(), fake_server()], log_dir=tmp_path) as servers:
        assert servers.base_urls[0] == servers.base_urls[1]
        assert len(servers.pids) == 1


def test_a_given_port_is_the_first_replicas_and_the_next_replicas_count_up(tmp_path):
    base = serve_vllm._free_port("127.0.0.1", set())
    with ManagedServers([fake_server(port=base, replicas=2)], log_dir=tmp_path) as servers:
        assert servers.base_urls[0] == [f"http://127.0.0.1:{base}/v1", f"http://127.0.0.1:{base + 1}/v1"]


def test_config_fields_become_vllm_arguments():
    server = VLLMServer(
        model="/m",
        served_model_name="m",
        tensor_parallel_size=2,
        gpu_memory_utilization=0.85,
        max_model_len=4096,
        dtype="bfloat16",
        extra_args=["--enable-prefix-caching"],
    )
    assert server.arguments(8001) == [
        "--model",
        "/m",
        "--host",
        "127.0.0.1",
        "--port",
        "8001",
        "--served-model-name",
        "m",
        "--tensor-parallel-size",
        "2",
        "--gpu-memory-utilization",
        "0.85",
        "--max-model-len",
        "4096",
        "--dtype",
        "bfloat16",
        "--enable-prefix-caching",
    ]


def test_devices_are_split_between_replicas_in_order():
    server = VLLMServer(model="/m", tensor_parallel_size=2, replicas=2, devices="0,1,2,3")
    assert server.replica_devices() == ["0,1", "2,3"]
    assert serve_vllm._server_env(server, "2,3")["CUDA_VISIBLE_DEVICES"] == "2,3"


def test_too_few_devices_for_the_replicas_is_refused():
    with pytest.raises(UserError, match=r"lists 2 devices; 2 replicas of tensor_parallel_size 2 need 4"):
        VLLMServer(model="/m", tensor_parallel_size=2, replicas=2, devices="0,1").check()


def test_no_vllm_environment_names_the_setup_command(tmp_path, monkeypatch):
    monkeypatch.setattr(serve_vllm, "_venv_roots", lambda: [tmp_path])
    monkeypatch.setattr(serve_vllm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match=r"scripts/setup\.sh --vllm"):
        ManagedServers([VLLMServer(model="/m")], log_dir=tmp_path / "logs").start()


# -- failing to start -------------------------------------------------------------------------------


def test_a_server_that_exits_before_it_is_ready_fails_in_one_line_quoting_its_log(tmp_path):
    with pytest.raises(UserError) as failure:
        ManagedServers([exits_at_once("ValueError: CUDA out of memory", 3)], log_dir=tmp_path).start()
    message = str(failure.value)
    assert "\n" not in message
    assert "exited with code 3 before it was ready" in message
    assert "ValueError: CUDA out of memory" in message
    assert str(tmp_path / "vllm-model-0.log") in message


def test_a_server_that_never_answers_times_out_and_is_stopped(tmp_path):
    script = "import os, time; print('loading weights, pid', os.getpid(), flush=True); time.sleep(600)"
    slow = VLLMServer(model="fake/model", command=[sys.executable, "-c", script], startup_timeout=2)
    with pytest.raises(UserError, match=r"did not answer /health within 2 s .*loading weights") as failure:
        ManagedServers([slow], log_dir=tmp_path).start()
    assert "\n" not in str(failure.value)
    pid = int(re.search(r"pid (\d+)", (tmp_path / "vllm-model-0.log").read_text()).group(1))
    assert not alive(pid)


def test_one_failing_server_stops_the_others(tmp_path):
    with pytest.raises(UserError, match="exited with code 1"):
        ManagedServers([fake_server(), exits_at_once("bad flag", 1)], log_dir=tmp_path).start()
    [pid] = fake_pids(tmp_path)
    assert wait_until_gone({pid}) == set()


def test_check_alive_names_a_server_that_died_after_it_was_ready(tmp_path):
    with ManagedServers([fake_server()], log_dir=tmp_path) as servers:
        servers.check_alive()
        [pid] = fake_pids(tmp_path)
        os.kill(pid, signal.SIGKILL)
        assert wait_until_gone(set(servers.pids)) == set()  # its guard exits with it
        with pytest.raises(UserError, match=r"vLLM server 'fake' exited with code 137 \(log: .*vllm-fake-0\.log\)"):
            servers.check_alive()


# -- stopping ---------------------------------------------------------------------------------------


def test_leaving_the_context_stops_every_process_and_restores_the_sigterm_handler(tmp_path):
    handler_before = signal.getsignal(signal.SIGTERM)
    with ManagedServers([fake_server(replicas=2)], log_dir=tmp_path) as servers:
        processes = {pid for group in servers.pids for pid in {group, *descendants(group)}}
        assert signal.getsignal(signal.SIGTERM) != handler_before
    assert len(processes) == 4  # two guards, two servers
    assert wait_until_gone(processes) == set()
    assert signal.getsignal(signal.SIGTERM) == handler_before


def test_ctrl_c_inside_the_context_stops_the_servers(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with ManagedServers([fake_server()], log_dir=tmp_path):
            raise KeyboardInterrupt
    assert wait_until_gone(fake_pids(tmp_path)) == set()


PARENT_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from spri_sft.serve import ManagedServers, VLLMServer

    server = VLLMServer(model="fake/model", served_model_name="fake", replicas=2, command=json.loads(sys.argv[2]))
    with ManagedServers([server], log_dir=sys.argv[1]) as servers:
        print(json.dumps(servers.base_urls[0]), flush=True)
        time.sleep(600)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_signalled_parent_leaves_no_server_process(tmp_path, signum):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT_SCRIPT, str(tmp_path), json.dumps(FAKE_VLLM)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert len(json.loads(parent.stdout.readline())) == 2  # both replicas are up
        servers = descendants(parent.pid)
        assert len(fake_pids(tmp_path) & servers) == 2
        parent.send_signal(signum)
        assert parent.wait(timeout=GONE_WITHIN_S) == -signum
        assert wait_until_gone(servers) == set()
    finally:
        parent.kill()
        parent.wait()


# -- listening off loopback -------------------------------------------------------------------------


def test_a_host_off_loopback_without_an_api_key_is_refused(tmp_path):
    refusal = r"host '0\.0\.0\.0' is reachable from other machines; set api_key_env"
    with pytest.raises(UserError, match=refusal) as failure:
        ManagedServers([fake_server(host="0.0.0.0")], log_dir=tmp_path).start()
    assert "\n" not in str(failure.value)
    assert not list(tmp_path.iterdir())  # refused before anything started


def test_an_api_key_env_that_is_not_set_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("SPRI_SFT_TEST_KEY", raising=False)
    with pytest.raises(UserError, match=r"\$SPRI_SFT_TEST_KEY, which is not set"):
        ManagedServers([fake_server(host="0.0.0.0", api_key_env="SPRI_SFT_TEST_KEY")], log_dir=tmp_path).start()


def test_the_api_key_reaches_the_server_but_no_command_line_or_log(tmp_path, monkeypatch):
    secret = "sk-test-7f3a9c1e"
    monkeypatch.setenv("SPRI_SFT_TEST_KEY", secret)
    server = fake_server(host="0.0.0.0", api_key_env="SPRI_SFT_TEST_KEY")
    with ManagedServers([server], log_dir=tmp_path) as servers:
        [[url]] = servers.base_urls
        assert url.startswith("http://127.0.0.1:")  # a wildcard host is reached through loopback
        processes = {pid for group in servers.pids for pid in {group, *descendants(group)}}
        command_lines = [cmdline(pid) for pid in processes]
    assert len(command_lines) == 2 and all("--host 0.0.0.0" in line for line in command_lines)
    assert not any(secret in line for line in command_lines)
    log = (tmp_path / "vllm-fake-0.log").read_text()
    assert "api key received: yes" in log
    assert not any(secret in path.read_text() for path in tmp_path.rglob("*") if path.is_file())


def test_an_inherited_vllm_api_key_does_not_reach_a_server_without_api_key_env(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_API_KEY", "inherited")
    with ManagedServers([fake_server()], log_dir=tmp_path):
        pass
    assert "api key received: no" in (tmp_path / "vllm-fake-0.log").read_text()


# -- the KV cache of vLLM's CPU build ---------------------------------------------------------------


def kv_cache_space_received(log_dir: Path) -> list[str]:
    """The VLLM_CPU_KVCACHE_SPACE each fake server was started with, as its log says ('unset' when none)."""
    text = "".join(path.read_text() for path in sorted(log_dir.glob("vllm-*.log")))
    return re.findall(r"VLLM_CPU_KVCACHE_SPACE: (\S+)", text)


@pytest.fixture
def no_inherited_kv_cache_space(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)


def test_a_server_gets_the_kv_cache_its_requests_in_flight_can_fill_and_says_so(
    tmp_path, smollm2_config_dir, no_inherited_kv_cache_space, caplog
):
    server = fake_server(model=str(smollm2_config_dir), max_model_len=2048)

    with caplog.at_level("INFO", logger="spri_sft.serve.vllm"):
        with ManagedServers([server], log_dir=tmp_path / "logs", requests_in_flight=[64]) as servers:
            said = servers.kv_caches[0]

    assert said.gib == 3  # 2048 tokens × 64 requests × 22.5 KiB = 2.81 GiB
    assert kv_cache_space_received(tmp_path / "logs") == ["3"]
    assert "vLLM server 'fake': KV cache 3 GiB = 2048 tokens × 64 sequences" in caplog.text


def test_replicas_and_servers_started_together_split_the_ram_share(tmp_path, no_inherited_kv_cache_space):
    # The fake model has no config.json: each process gets its part of a quarter of the RAM.
    with ManagedServers([fake_server(replicas=2), fake_server(served_model_name="other")], log_dir=tmp_path) as servers:
        sizes = servers.kv_caches
    assert [size.processes for size in sizes] == [3, 3]
    assert kv_cache_space_received(tmp_path) == [str(sizes[0].gib)] * 3


@pytest.mark.parametrize(
    "user_setting",
    [
        {"env": {"VLLM_CPU_KVCACHE_SPACE": "2"}},
        {"extra_args": ["--kv-cache-memory-bytes", "2000000000"]},
        {"gpu_memory_utilization": 0.5},
    ],
    ids=["env", "vllm-flag", "gpu_memory_utilization"],
)
def test_a_kv_cache_the_user_sized_is_left_as_set(tmp_path, user_setting, no_inherited_kv_cache_space):
    with ManagedServers([fake_server(**user_setting)], log_dir=tmp_path) as servers:
        assert servers.kv_caches == [None]
    assert kv_cache_space_received(tmp_path) == [user_setting.get("env", {}).get("VLLM_CPU_KVCACHE_SPACE", "unset")]


def test_an_inherited_kv_cache_space_is_the_users_too(tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "2")
    with ManagedServers([fake_server()], log_dir=tmp_path) as servers:
        assert servers.kv_caches == [None]
    assert kv_cache_space_received(tmp_path) == ["2"]


def fake_distribution(root: Path, name: str, version: str) -> Path:
    """A directory on which Python's package metadata finds `name` `version` installed."""
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return root


@pytest.mark.parametrize(
    ("name", "version", "build"),
    [("vllm-cpu", "0.32.0", "cpu"), ("vllm", "0.32.0+cpu", "cpu"), ("vllm", "0.32.0", "gpu")],
)
def test_the_vllm_build_is_read_as_vllm_reads_it(tmp_path, name, version, build):
    site = fake_distribution(tmp_path, name, version)
    server = VLLMServer(model="m", python=sys.executable, env={"PYTHONPATH": str(site)})

    assert serve_vllm._vllm_build(server, server.launcher()) == build


def test_a_gpu_build_keeps_vllms_own_sizing(tmp_path, monkeypatch, no_inherited_kv_cache_space):
    monkeypatch.setattr(serve_vllm, "_vllm_build", lambda server, launcher: "gpu")
    with ManagedServers([fake_server()], log_dir=tmp_path) as servers:
        assert servers.kv_caches == [None]
    assert kv_cache_space_received(tmp_path) == ["unset"]


# -- the real server (vllm-cpu in .venv-vllm) -------------------------------------------------------

REAL_PARENT_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from spri_sft.serve import ManagedServers, VLLMServer

    # No VLLM_CPU_KVCACHE_SPACE: spri-sft sizes the KV cache (tests above check that it reaches the server).
    server = VLLMServer(
        model=sys.argv[2], served_model_name="smollm2-under-test", dtype="bfloat16", max_model_len=2048,
        api_key_env="SPRI_SFT_TEST_KEY", startup_timeout=900,
    )
    started = time.monotonic()
    with ManagedServers([server], log_dir=sys.argv[1], requests_in_flight=[4]) as servers:
        said = servers.kv_caches[0].gib
        print(json.dumps({"url": servers.base_urls[0][0], "start_s": time.monotonic() - started, "kv_gib": said}),
              flush=True)
        time.sleep(3600)
    """
)
# What a CPU vLLM serving SmolLM2-135M holds besides its KV cache, in all its processes together (the API
# server, the engine core and its worker each import torch and vLLM; the weights are 270 MB in bfloat16):
# measured 2.74 GiB with vllm-cpu 0.32.0 (3.74 GiB of RSS with a 1 GiB cache). Left to vLLM's own sizing the
# same server took 21.4 GB on a 23.5 GiB machine.
NON_KV_RSS_BYTES = 4 * GIB
CPU_BLOCK_TOKENS = 128  # vLLM's CPU KV cache block (vllm.platforms.cpu)
REAL_KEY = "sk-real-vllm-2b8e41d0"


@pytest.fixture(scope="module")
def real_vllm(tmp_path_factory):
    """A parent process serving SmolLM2 through ManagedServers with the real vLLM (started once per module).

    The last test of this section signals the parent, so tests that talk to the server come before it.
    """
    if not VLLM_PYTHON.exists():
        pytest.skip("no .venv-vllm (build it with `bash scripts/setup.sh --vllm`)")
    from spri_sft.models import DEFAULT_MODEL, resolve_model

    log_dir = tmp_path_factory.mktemp("vllm-logs")
    model = str(resolve_model(DEFAULT_MODEL))
    parent = subprocess.Popen(
        [sys.executable, "-c", REAL_PARENT_SCRIPT, str(log_dir), model],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**{k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}, "SPRI_SFT_TEST_KEY": REAL_KEY},
    )
    line = parent.stdout.readline()
    if not line:
        parent.wait()
        logs = " | ".join(path.read_text()[-2000:] for path in log_dir.glob("*.log"))
        pytest.fail(f"the vLLM server did not start: {logs}")
    started = json.loads(line)
    print(f"vLLM start: {started['start_s']:.0f} s")
    yield {"parent": parent, "url": started["url"], "log_dir": log_dir, "kv_gib": started["kv_gib"], "model": model}
    parent.kill()
    parent.wait()


@pytest.mark.vllm
def test_real_vllm_reply_reports_usage_and_a_length_stop(real_vllm):
    client = openai.OpenAI(base_url=real_vllm["url"], api_key=REAL_KEY)
    reply = client.chat.completions.create(
        model="smollm2-under-test", messages=[{"role": "user", "content": "Tell me about the sea."}], max_tokens=5
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5
    assert reply.usage.prompt_tokens > 5


@pytest.mark.vllm
def test_real_vllm_requires_the_key_it_got_from_the_environment(real_vllm):
    client = openai.OpenAI(base_url=real_vllm["url"], api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert not any(REAL_KEY in path.read_text() for path in real_vllm["log_dir"].glob("*"))


@pytest.mark.vllm
def test_real_vllm_on_the_cpu_stays_within_the_kv_cache_it_said(real_vllm):
    log = "".join(path.read_text() for path in real_vllm["log_dir"].glob("vllm-*.log"))
    [vllm_says] = re.findall(r"Explicitly set \(([\d.]+)/[\d.]+\) GiB for KV cache", log)
    processes = [psutil.Process(pid) for pid in descendants(real_vllm["parent"].pid)]
    rss = sum(process.memory_info().rss for process in processes)
    print(f"KV cache said {real_vllm['kv_gib']} GiB, vLLM {vllm_says} GiB; server RSS {rss / GIB:.2f} GiB")

    assert float(vllm_says) == real_vllm["kv_gib"]
    assert rss <= real_vllm["kv_gib"] * GIB + NON_KV_RSS_BYTES


@pytest.mark.vllm
def test_real_vllm_fits_as_many_tokens_in_the_cache_as_the_sizing_counted(real_vllm):
    log = "".join(path.read_text() for path in real_vllm["log_dir"].glob("vllm-*.log"))
    [tokens] = re.findall(r"CPU KV cache size: ([\d,]+) tokens", log)
    bytes_per_token = KVShape.from_config(read_model_config(real_vllm["model"])).bytes_per_token(2)  # bfloat16

    counted = real_vllm["kv_gib"] * GIB // bytes_per_token
    assert counted - CPU_BLOCK_TOKENS < int(tokens.replace(",", "")) <= counted  # vLLM allots whole blocks


@pytest.mark.vllm
def test_real_vllm_sigterm_to_the_parent_leaves_no_vllm_process(real_vllm):
    parent = real_vllm["parent"]
    servers = descendants(parent.pid)
    assert any("smollm2-under-test" in cmdline(pid) for pid in servers)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=120) == -signal.SIGTERM
    assert wait_until_gone(servers) == set()
