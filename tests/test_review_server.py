"""`spri-sft view`'s HTTP server, spoken to over real HTTP: the JSON API the page reads (overview, filtered
and paged list, search, record with the same prompt in the other modes), decisions (written only with the
page's token, from its own origin, as JSON, and never under --read-only), and what it never serves."""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from review_records import FAILED_ID, PROMPTS, records_of

from spri_sft.cli import main
from spri_sft.errors import UserError
from spri_sft.review.decisions import read_decisions
from spri_sft.review.server import TOKEN_VARIABLE, open_viewer

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def serving(run):
    """Start a viewer of `run` (read_only etc. as keywords); stops it after the test."""
    servers = []

    def start(paths=None, **options):
        server = open_viewer(paths or [run], **options).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
        server.viewer.index.close()


@pytest.fixture
def viewer(serving):
    return serving()


def get(server, path: str, headers: dict | None = None) -> tuple[int, dict | str, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{server.server_address[1]}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, body, answer_headers = response.status, response.read(), response.headers
    except urllib.error.HTTPError as err:
        status, body, answer_headers = err.code, err.read(), err.headers
    kind = answer_headers.get("Content-Type", "")
    if kind.startswith("application/json"):
        return status, json.loads(body), answer_headers
    answer = body.decode() if kind.startswith("text/") else body
    return status, answer, answer_headers


def raw_get(server, path: str, headers: dict | None = None) -> int:
    """GET `path` exactly as written (no client normalizing `..` or escapes away)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    connection.putrequest("GET", path, skip_host=True)
    for name, value in {"Host": f"127.0.0.1:{server.server_address[1]}", **(headers or {})}.items():
        connection.putheader(name, value)
    connection.endheaders()
    status = connection.getresponse().status
    connection.close()
    return status


def post_decision(server, body, token: str | None = "page", headers: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if not isinstance(body, bytes) else body
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        sent["X-SPRI-Token"] = server.viewer.page_token if token == "page" else token
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.server_address[1]}/api/decisions", data=data, headers=sent, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def record_id(run: Path, mode: str, prompt: str) -> str:
    return next(r["id"] for r in records_of(run, mode) if r["prompt"] == prompt)


# -- reading


def test_the_page_carries_the_write_token_and_whether_it_is_read_only(serving):
    writable, read_only = serving(), serving(read_only=True)
    status, page, headers = get(writable, "/")
    assert status == 200 and f'<meta name="spri-token" content="{writable.viewer.page_token}">' in page
    assert '<meta name="spri-read-only" content="false">' in page
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert '<meta name="spri-read-only" content="true">' in get(read_only, "/")[1]


def test_the_pages_assets_are_served(viewer):
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        status, _, headers = get(viewer, f"/static/{name}")
        assert status == 200 and headers["Content-Type"].startswith(kind)


def test_the_overview_counts_each_mode_and_the_decisions(viewer, run):
    status, overview, _ = get(viewer, "/api/overview")
    assert status == 200
    assert {mode: m["records"] for mode, m in overview["modes"].items()} == {"direct": 6, "spri": 7}
    assert overview["modes"]["spri"]["status"] == {"accepted": 4, "max_rounds": 2, "failed": 1}
    assert overview["decisions"] == {"exclude": 0, "keep": 0} and overview["read_only"] is False


def test_the_overview_names_the_paths_given_in_short_and_every_records_file_they_name(serving, run):
    generated = run / "generate"
    viewer = serving([generated / "spri" / "records.jsonl", generated / "direct" / "records.jsonl"])
    overview = get(viewer, "/api/overview")[1]
    assert overview["path"] == "generate: spri/records.jsonl, direct/records.jsonl"
    assert overview["files"] == [str(generated / "spri" / "records.jsonl"), str(generated / "direct" / "records.jsonl")]


def test_the_list_filters_by_mode_status_and_score_range(viewer):
    _, listed, _ = get(viewer, "/api/records?mode=spri&status=max_rounds&min_score=1&max_score=3&score_stage=response")
    assert [(i["prompt"], i["response_score"]) for i in listed["items"]] == [(PROMPTS[3], 2)]
    assert get(viewer, "/api/records?mode=direct")[1]["total"] == 6
    assert [i["id"] for i in get(viewer, "/api/records?failed=1")[1]["items"]] == [FAILED_ID]


def test_the_list_pages_and_sorts(viewer):
    _, first, _ = get(viewer, "/api/records?sort=tokens&order=desc&page_size=5")
    _, third, _ = get(viewer, "/api/records?sort=tokens&order=desc&page_size=5&page=3")
    assert (first["total"], len(first["items"]), third["page"], len(third["items"])) == (13, 5, 3, 3)
    tokens = [i["tokens"] for i in first["items"] + third["items"]]
    assert tokens == sorted(tokens, reverse=True)


def test_search_narrows_the_list_and_never_fails_on_its_syntax(viewer):
    _, found, _ = get(viewer, "/api/records?q=Question%202")
    assert sorted(i["mode"] for i in found["items"]) == ["direct", "spri"]
    status, odd, _ = get(viewer, "/api/records?q=%22Question%20AND%20(")
    assert status == 200 and odd["total"] == 0


def test_a_bad_filter_value_is_a_400_naming_it(viewer):
    status, answer, _ = get(viewer, "/api/records?min_score=high")
    assert status == 400 and answer["error"] == "min_score must be a whole number (got 'high')"


def test_a_record_comes_whole_with_the_same_prompt_in_the_other_modes(viewer, run):
    spri = next(r for r in records_of(run, "spri") if r["prompt"] == PROMPTS[1])
    direct = next(r for r in records_of(run, "direct") if r["prompt"] == PROMPTS[1])
    status, answer, _ = get(viewer, f"/api/record/{spri['id']}")
    assert status == 200
    assert answer == {"record": spri, "decision": None, "same_prompt": [{"mode": "direct", "record": direct}]}


def test_an_unknown_record_is_a_404(viewer):
    assert get(viewer, "/api/record/nothing-here")[0] == 404


def test_the_run_roots_report_figures_are_listed_and_served(serving, run):
    (run / "critic_scores.png").write_bytes(b"\x89PNG fake")
    viewer = serving()
    assert get(viewer, "/api/overview")[1]["figures"] == ["critic_scores.png"]
    assert get(viewer, "/figures/critic_scores.png")[:2] == (200, b"\x89PNG fake")


def test_lines_a_generation_appends_while_viewing_are_listed(viewer, run):
    new = {**records_of(run, "direct")[0], "id": "appended00000001"}
    with (run / "generate" / "direct" / "records.jsonl").open("a") as handle:
        handle.write(json.dumps(new) + "\n")
    assert get(viewer, "/api/records?mode=direct")[1]["total"] == 7


# -- nothing else is served


@pytest.mark.parametrize(
    "path",
    [
        "/static/../server.py", "/static/..%2fserver.py", "/static/%2e%2e/server.py", "/static/index.py",
        "/static//etc/passwd", "/figures/../config.yaml", "/figures/..%2fconfig.yaml", "/config.yaml",
        "/generate/spri/records.jsonl", "/review/decisions.jsonl", "/%2e%2e/%2e%2e/etc/passwd",
    ],
)  # fmt: skip
def test_a_path_outside_the_assets_and_figures_is_never_served(viewer, path):
    assert raw_get(viewer, path) == 404


def test_a_request_for_another_host_name_is_refused(viewer):
    """A web page whose DNS name was rebound to 127.0.0.1 sends its own name as Host."""
    assert raw_get(viewer, "/api/overview", {"Host": f"attacker.example:{viewer.server_address[1]}"}) == 421
    assert raw_get(viewer, "/api/overview", {"Host": f"localhost:{viewer.server_address[1]}"}) == 200


# -- decisions


def test_a_decision_with_the_page_token_is_appended_and_shown(viewer, run):
    spri = record_id(run, "spri", PROMPTS[3])
    status, answer = post_decision(viewer, {"id": spri, "decision": "exclude", "reason": "misses the sources"})
    assert status == 200
    assert (answer["decision"]["mode"], answer["decision"]["reason"]) == ("spri", "misses the sources")
    assert read_decisions(run / "review" / "decisions.jsonl")[spri]["decision"] == "exclude"
    assert [i["id"] for i in get(viewer, "/api/records?decision=exclude")[1]["items"]] == [spri]
    assert get(viewer, "/api/records?decision=none")[1]["total"] == 12
    assert get(viewer, f"/api/record/{spri}")[1]["decision"]["decision"] == "exclude"
    assert get(viewer, "/api/overview")[1]["decisions"] == {"exclude": 1, "keep": 0}


def test_a_decision_is_recorded_under_the_reviewers_name(serving, run):
    viewer = serving(reviewer="ada")
    assert post_decision(viewer, {"id": FAILED_ID, "decision": "keep", "reason": None})[1]["decision"]["who"] == "ada"


@pytest.mark.parametrize(
    "token, headers, why",
    [
        (None, {}, "a decision needs the page's token"),
        ("guessed", {}, "a decision needs the page's token"),
        ("page", {"Origin": "http://attacker.example"}, "must come from the viewer's own page"),
        ("page", {"Content-Type": "text/plain"}, "is sent as application/json"),
    ],
)
def test_a_decision_without_the_token_from_another_origin_or_not_json_is_refused(viewer, run, token, headers, why):
    status, answer = post_decision(viewer, {"id": FAILED_ID, "decision": "exclude"}, token=token, headers=headers)
    assert status == 403 and why in answer["error"]
    assert not (run / "review" / "decisions.jsonl").exists()


def test_a_decision_from_the_pages_own_origin_is_accepted(viewer):
    origin = {"Origin": f"http://127.0.0.1:{viewer.server_address[1]}"}
    assert post_decision(viewer, {"id": FAILED_ID, "decision": "exclude"}, headers=origin)[0] == 200


def test_read_only_refuses_every_decision(serving, run):
    status, answer = post_decision(serving(read_only=True), {"id": FAILED_ID, "decision": "exclude"})
    assert status == 403 and "read-only" in answer["error"]
    assert not (run / "review" / "decisions.jsonl").exists()


@pytest.mark.parametrize(
    "body, status, why",
    [
        ({"id": "no-such-record", "decision": "exclude"}, 404, "no record 'no-such-record'"),
        ({"id": FAILED_ID, "decision": "drop"}, 400, "field 'decision' must be 'exclude' or 'keep'"),
        ({"id": FAILED_ID, "decision": "exclude", "reason": 7}, 400, "field 'reason' must be a string"),
        ([FAILED_ID], 400, "must be a JSON object"),
        (b"{not json", 400, "not JSON"),
    ],
)
def test_a_bad_decision_body_is_refused_naming_the_field(viewer, body, status, why):
    answered, answer = post_decision(viewer, body)
    assert answered == status and why in answer["error"]


# -- another host than this machine


def test_another_host_without_a_token_in_the_environment_is_refused(run, monkeypatch):
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    with pytest.raises(
        UserError,
        match=rf"^view: --host 0.0.0.0 serves beyond this machine, so only with a token: set {TOKEN_VARIABLE} ",
    ):
        open_viewer([run], host="0.0.0.0")


def test_on_another_host_every_request_needs_the_token(serving, monkeypatch):
    monkeypatch.setenv(TOKEN_VARIABLE, "s3cret-token")
    viewer = serving(host="0.0.0.0")
    assert viewer.url.endswith(f":{viewer.server_address[1]}/?token=s3cret-token")
    assert get(viewer, "/api/overview")[0] == 401
    assert get(viewer, "/static/app.js")[0] == 401
    assert get(viewer, "/api/overview", {"Authorization": "Bearer wrong"})[0] == 401
    assert get(viewer, "/api/overview", {"Authorization": "Bearer s3cret-token"})[0] == 200
    status, _, headers = get(viewer, "/?token=s3cret-token")
    cookie = headers["Set-Cookie"]
    assert status == 200 and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "s3cret-token" not in cookie, "the cookie holds a digest of the token, not the token"
    assert get(viewer, "/api/overview", {"Cookie": cookie.split(";")[0]})[0] == 200
    assert get(viewer, "/api/overview", {"Cookie": "spri_view_token=forged"})[0] == 401


# -- the command line


def test_view_of_a_path_that_is_not_there_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["view", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err == f"spri-sft: error: view: {tmp_path / 'nowhere'} does not exist\n"


def test_view_sample_without_export_is_refused(run, capsys):
    assert main(["view", str(run), "--sample", "5"]) == 2
    assert "--sample is for --export FILE.html" in capsys.readouterr().err


def test_view_prints_its_url_serves_it_and_stops_on_ctrl_c_with_one_line(run):
    viewer = subprocess.Popen(
        [sys.executable, "-m", "spri_sft.cli", "view", str(run)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert viewer.stdout.readline() == "[spri-sft] view: 13 records of 2 file(s)\n"
        url = viewer.stdout.readline()
        assert re.fullmatch(r"\[spri-sft\] view: http://127\.0\.0\.1:\d+/\n", url)
        with urllib.request.urlopen(url.split("view: ")[1].strip() + "api/overview", timeout=10) as response:
            assert json.loads(response.read())["modes"]["spri"]["records"] == 7
    finally:
        viewer.send_signal(signal.SIGINT)
        _, stderr = viewer.communicate(timeout=30)
    assert viewer.returncode == 130
    assert stderr == "spri-sft: interrupted; every decision made is kept in the review's decisions.jsonl\n"
