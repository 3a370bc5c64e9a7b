"""`spri-sft view` in a real browser: Debian's Chromium, headless, driven by Selenium through chromedriver.

One run of three modes (spri, direct, self-refine) over the same eight prompts is generated once, in this
process, against the fake OpenAI server; one of its prompts fails in every mode, and two make the model answer
with HTML that would run if the page ever set model text as HTML. `spri-sft view` serves the three records
files as a subprocess, as a user starts it, and one Chromium serves every test of the module.

The module skips, with one reason, where Chromium or chromedriver is missing (`bash scripts/setup.sh` installs
Debian's `chromium` and `chromium-driver` when it runs as root or with sudo). Selenium is pointed at both
binaries, so its Selenium Manager never looks for (or downloads) a browser or a driver.

With SPRI_SFT_SCREENSHOTS=DIR the overview, list and record pages are also saved as PNGs in DIR.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fake_openai_server import FakeOpenAIServer, default_reply

from spri_sft.generate.config import GenerateConfig
from spri_sft.generate.inputs import PromptSource
from spri_sft.generate.run import generate
from spri_sft.llm.base import EndpointConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="the browser tests need Debian's chromium and chromium-driver (bash scripts/setup.sh installs them as root or with sudo)",
    ),
    pytest.mark.timeout(120),
]

MODES = ("spri", "direct", "self-refine")
SCRIPT_PAYLOAD = "<script>window.__pwned=1</script>"
IMG_PAYLOAD = '<img src=x onerror="window.__pwned=1">'
FAILING_PROMPT = "Summarize the causes of the French Revolution in two sentences."
PROMPTS = (
    "How do ocean tides work?",
    "Write a haiku about autumn leaves.",
    "Explain recursion to a ten-year-old.",
    "What should I pack for a three-day hike?",
    "Why is the sky blue during the day?",
    FAILING_PROMPT,
    f"Repeat this markup back to me: {SCRIPT_PAYLOAD}",
    f"Repeat this image tag back to me: {IMG_PAYLOAD}",
)
WAIT_SECONDS = 10.0  # the longest any page element may take to appear
VIEW_URL_LINE = re.compile(r"\[spri-sft\] view: (http://\S+)")


# -- the run ---------------------------------------------------------------------------------------------


def scripted_reply(messages: list[dict], body: dict) -> str:
    """The fake model: the HTML payloads for the prompts that carry them (in every round, so the final response
    is the payload), a 500 for the failing prompt, an echo of the request otherwise."""
    asked = " ".join(str(m.get("content")) for m in messages)
    if FAILING_PROMPT in asked:
        raise RuntimeError("the fake model refuses this prompt")
    if SCRIPT_PAYLOAD in asked:
        return SCRIPT_PAYLOAD
    if IMG_PAYLOAD in asked:
        return IMG_PAYLOAD
    return default_reply(messages, body)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """<run>/<mode>/records.jsonl for each of MODES; the critic scores a first version 2 and its revision 5, so
    spri and self-refine records hold a draft and a revision to diff."""
    root = tmp_path_factory.mktemp("viewed-run")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in PROMPTS))
    with FakeOpenAIServer(reply_fn=scripted_reply, critic_scores=(2, 5)) as server:
        endpoint = EndpointConfig(backend="openai", model="fake-model", base_url=[server.base_url], max_retries=0)
        for mode in MODES:
            generate(
                GenerateConfig(
                    output_dir=str(root / mode), mode=mode, prompts=PromptSource(path=str(prompts)),
                    base=endpoint, critic=endpoint, progress=False, max_failed_share=0.5,
                )
            )  # fmt: skip
    return root


def records_of(run_dir: Path, mode: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / mode / "records.jsonl").read_text().splitlines()]


def record_of(run_dir: Path, mode: str, prompt: str) -> dict:
    return next(record for record in records_of(run_dir, mode) if record["prompt"] == prompt)


# -- the viewer ------------------------------------------------------------------------------------------


class Viewer:
    """A running `spri-sft view` subprocess and the URL it printed."""

    def __init__(self, paths: list[Path], *flags: str, env: dict[str, str] | None = None):
        self.process = subprocess.Popen(
            [sys.executable, "-m", "spri_sft.cli", "view", *map(str, paths), *flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})},
        )  # fmt: skip
        lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []

        def pump() -> None:  # reads on after the URL, so the server never blocks on a full pipe
            for line in self.process.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        while True:
            try:
                line = lines.get(timeout=60)
            except queue.Empty:
                self.stop()
                raise AssertionError(f"spri-sft view printed no URL in 60 s: {''.join(self.output)}") from None
            if line is None:
                raise AssertionError(f"spri-sft view exited {self.process.wait()}: {''.join(self.output)}")
            self.output.append(line)
            found = VIEW_URL_LINE.search(line)
            if found:
                self.url = found.group(1)
                break
        self.origin = re.match(r"http://[^/]+", self.url).group(0)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def records_files(run_dir: Path) -> list[Path]:
    """The three modes' records files, spri's first: the review directory is <run>/spri/review/."""
    return [run_dir / mode / "records.jsonl" for mode in MODES]


@pytest.fixture(scope="module")
def viewer(records_files: list[Path]) -> Iterator[Viewer]:
    running = Viewer(records_files, "--reviewer", "browser-test")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def read_only_viewer(records_files: list[Path]) -> Iterator[Viewer]:
    running = Viewer(records_files, "--read-only")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def exported_page(records_files: list[Path], tmp_path_factory) -> str:
    """The file:// URL of `spri-sft view --export` of every record of the run (the sample is all 24)."""
    from spri_sft.cli import main

    exported = tmp_path_factory.mktemp("export") / "sample.html"
    assert main(["view", *map(str, records_files), "--export", str(exported), "--sample", "24"]) == 0
    return exported.as_uri()


@pytest.fixture(scope="module")
def decisions_file(run_dir: Path) -> Path:
    return run_dir / "spri" / "review" / "decisions.jsonl"


# -- the browser -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace to sandbox with
        "--disable-dev-shm-usage",  # a container's /dev/shm is often 64 MB
        "--window-size=1280,900",
        "--no-first-run",
        "--disable-background-networking",  # offline: no update or safe-browsing calls
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def wait_for(driver, condition, message: str):
    """`condition(driver)`'s first truthy value within WAIT_SECONDS; a timeout fails naming `message`."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_SECONDS).until(condition, message)


def screenshot(driver, name: str) -> None:
    """With SPRI_SFT_SCREENSHOTS=DIR, the whole page (not only the window's part of it) as DIR/NAME.png."""
    folder = os.environ.get("SPRI_SFT_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        # The window's width, not the page's: a page taller than the window is laid out without its scrollbar for
        # the capture, so the page's width (window less scrollbar) would cut its right edge off.
        width = max(page["width"], driver.execute_script("return window.innerWidth"))
        clip = {"x": 0, "y": 0, "width": width, "height": page["height"], "scale": 1}
        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "clip": clip})
        (Path(folder) / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


def post_decision(viewer: Viewer, body: dict, headers: dict[str, str]) -> int:
    """The HTTP status of a POST /api/decisions with these headers (urllib's, so nothing is added)."""
    request = urllib.request.Request(
        viewer.origin + "/api/decisions", data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as refused:
        return refused.code


@contextlib.contextmanager
def other_site(page: str) -> Iterator[str]:
    """Serves `page` at the URL yielded: another origin than the viewer's (another port of 127.0.0.1)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = page.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format, *args):  # quiet: its requests are the test's own
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def page_token(viewer: Viewer) -> str:
    """The write token the server put in the page's <meta name="spri-token">."""
    with urllib.request.urlopen(viewer.url, timeout=10) as response:
        page = response.read().decode()
    return re.search(r'<meta name="spri-token" content="([^"]+)"', page).group(1)


def decision_lines(decisions_file: Path) -> list[dict]:
    return [json.loads(line) for line in decisions_file.read_text().splitlines()] if decisions_file.exists() else []


def open_page(driver, page_url: str, route: str, ready_testid: str):
    """Load the page (a viewer's URL or an exported file's) at `route` and wait for the element to show."""
    from selenium.webdriver.common.by import By

    driver.get(page_url + route)
    return wait_for(
        driver,
        lambda d: d.find_elements(By.CSS_SELECTOR, f'[data-testid="{ready_testid}"]'),
        f"{ready_testid} at {route}",
    )[0]


def listed_ids(driver) -> set[str] | None:
    """The ids of the list's rows, or None while the list is loading."""
    ids = driver.execute_script(
        "const root = document.querySelector('[data-testid=records-view]');"
        "if (!root || root.classList.contains('loading')) return null;"
        "return [...root.querySelectorAll('[data-testid=record-row]')].map((row) => row.dataset.id);"
    )
    return None if ids is None else set(ids)


def wait_for_listed(driver, expected: set[str]) -> None:
    from selenium.common.exceptions import TimeoutException

    try:
        wait_for(driver, lambda d: listed_ids(d) == expected, "the list")
    except TimeoutException:
        raise AssertionError(f"the list shows {listed_ids(driver)}, expected {expected}") from None


# The text of arguments[0] with the elements matching the selector arguments[1] left out.
TEXT_WITHOUT = (
    "const copy = arguments[0].cloneNode(true);"
    "copy.querySelectorAll(arguments[1]).forEach((element) => element.remove());"
    "return copy.textContent;"
)


def ids_where(run_dir: Path, **fields) -> set[str]:
    return {
        record["id"]
        for mode in MODES
        for record in records_of(run_dir, mode)
        if all(record[key] == value for key, value in fields.items())
    }


# -- the overview ----------------------------------------------------------------------------------------


def test_the_overview_shows_each_modes_record_and_status_counts(browser, viewer):
    from selenium.webdriver.common.by import By

    open_page(browser, viewer.url, "#/", "overview-view")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, '[data-testid="mode-card"]')) == 3, "mode cards")
    screenshot(browser, "overview")

    shown = {}
    for card in browser.find_elements(By.CSS_SELECTOR, '[data-testid="mode-card"]'):
        statuses = {
            row.get_attribute("data-status"): row.find_element(By.CSS_SELECTOR, "td").text
            for row in card.find_elements(By.CSS_SELECTOR, '[data-testid="status-count"]')
        }
        shown[card.get_attribute("data-mode")] = (
            card.find_element(By.CSS_SELECTOR, '[data-testid="mode-records"]').text,
            statuses,
        )
    assert shown == {mode: ("8", {"accepted": "7", "failed": "1"}) for mode in MODES}


def test_the_overview_lists_the_modes_in_the_order_they_were_given(browser, viewer):
    from selenium.webdriver.common.by import By

    open_page(browser, viewer.url, "#/", "mode-card")
    cards = browser.find_elements(By.CSS_SELECTOR, '[data-testid="mode-card"]')
    assert [card.get_attribute("data-mode") for card in cards] == list(MODES)


def test_a_mode_that_calls_no_critic_shows_no_unscored_share_and_no_score_chart(browser, viewer):
    from selenium.webdriver.common.by import By

    open_page(browser, viewer.url, "#/", "mode-card")
    direct = browser.find_element(By.CSS_SELECTOR, '[data-testid="mode-card"][data-mode="direct"]')
    spri = browser.find_element(By.CSS_SELECTOR, '[data-testid="mode-card"][data-mode="spri"]')

    assert direct.find_element(By.CSS_SELECTOR, '[data-testid="unscored-share"]').text == "–"
    assert direct.find_element(By.CSS_SELECTOR, '[data-testid="no-critic"]').text == "no critic"
    assert not direct.find_elements(By.CSS_SELECTOR, '[data-testid^="chart-final-score"]')
    assert spri.find_element(By.CSS_SELECTOR, '[data-testid="unscored-share"]').text == "0.0%"
    assert spri.find_elements(By.CSS_SELECTOR, '[data-testid="chart-final-score-response"]')


def test_the_header_names_the_paths_given_in_short_and_lists_the_records_files_in_its_tooltip(
    browser, viewer, records_files
):
    from selenium.webdriver.common.by import By

    open_page(browser, viewer.url, "#/", "mode-card")
    header = wait_for(browser, lambda d: d.find_element(By.ID, "run-path").text and d.find_element(By.ID, "run-path"),
                      "the header's path")  # fmt: skip

    assert header.text == f"{records_files[0].parent.parent.name}: " + ", ".join(
        f"{mode}/records.jsonl" for mode in MODES
    )
    assert header.get_attribute("title").splitlines() == list(map(str, records_files))


# -- the list --------------------------------------------------------------------------------------------


def test_the_list_filters_by_mode_and_then_by_status(browser, viewer, run_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    open_page(browser, viewer.url, "#/records", "records-view")
    wait_for_listed(browser, ids_where(run_dir))
    screenshot(browser, "list")

    Select(browser.find_element(By.ID, "filter-mode")).select_by_value("direct")
    wait_for_listed(browser, ids_where(run_dir, mode="direct"))
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("failed")
    wait_for_listed(browser, ids_where(run_dir, mode="direct", status="failed"))


# The bottom of the first line of text of the mode, flags and prompt cells of the list's first row with a flag.
TEXT_BOTTOMS = (
    "const row = [...document.querySelectorAll('[data-testid=record-row]')]"
    "  .find((r) => r.querySelector('td.flags').textContent);"
    "const bottom = (cell) => {"
    "  const range = document.createRange(); range.selectNodeContents(cell.firstChild);"
    "  return range.getClientRects()[0].bottom; };"
    "return [row.cells[1], row.querySelector('td.flags'), row.querySelector('td.prompt-cell')].map(bottom);"
)


def test_the_lists_flags_sit_on_the_same_line_as_the_rest_of_their_row(browser, viewer, run_dir):
    open_page(browser, viewer.url, "#/records", "records-view")
    wait_for_listed(browser, ids_where(run_dir))

    mode_bottom, flags_bottom, prompt_bottom = browser.execute_script(TEXT_BOTTOMS)
    # The flags are in a smaller font: their text ends a little higher on the same baseline (its descent), not 3 px.
    assert abs(flags_bottom - mode_bottom) < 1 and abs(prompt_bottom - mode_bottom) < 1


def test_the_list_fits_a_1280_px_window_its_prompts_ending_in_an_ellipsis(browser, viewer, run_dir):
    from selenium.webdriver.common.by import By

    open_page(browser, viewer.url, "#/records", "records-view")
    wait_for_listed(browser, ids_where(run_dir))

    page_width, window_width = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    table = browser.find_element(By.ID, "records-table").rect
    view = browser.find_element(By.ID, "view")
    view_right = browser.execute_script(
        "return arguments[0].getBoundingClientRect().right - parseFloat(getComputedStyle(arguments[0]).paddingRight)",
        view,
    )
    assert page_width <= window_width and table["x"] + table["width"] <= view_right + 0.5
    cut = [cell for cell in browser.find_elements(By.CSS_SELECTOR, ".prompt-cell")
           if browser.execute_script("return arguments[0].scrollWidth > arguments[0].clientWidth", cell)]  # fmt: skip
    assert cut and all(cell.value_of_css_property("text-overflow") == "ellipsis" for cell in cut)


def test_the_search_box_narrows_the_list_to_the_records_mentioning_the_words(browser, viewer, run_dir):
    from selenium.webdriver.common.by import By

    open_page(browser, viewer.url, "#/records", "records-view")
    wait_for_listed(browser, ids_where(run_dir))

    browser.find_element(By.ID, "search").send_keys("haiku")
    wait_for_listed(browser, ids_where(run_dir, prompt=PROMPTS[1]))


# -- the record page -------------------------------------------------------------------------------------


def test_a_record_page_shows_the_revision_as_a_word_diff_of_the_draft(browser, viewer, run_dir):
    from selenium.webdriver.common.by import By

    record = record_of(run_dir, "spri", PROMPTS[0])
    draft, revision = [r["text"] for r in record["rounds"] if r["stage"] == "response"]
    assert draft != revision, "the fixture's critic asks for one revision"

    open_page(browser, viewer.url, f"#/record/{record['id']}", "record-view")
    screenshot(browser, "record")
    second = browser.find_element(
        By.CSS_SELECTOR, '[data-testid="response-round"][data-round="2"] [data-testid="version-text"]'
    )

    assert second.find_elements(By.CSS_SELECTOR, "ins.diff-ins"), "the words the revision added are marked"
    assert browser.execute_script(TEXT_WITHOUT, second, "ins").split() == draft.split()
    assert browser.execute_script(TEXT_WITHOUT, second, "del").split() == revision.split()


def test_a_record_page_shows_the_same_prompt_in_every_mode_side_by_side(browser, viewer, run_dir):
    from selenium.webdriver.common.by import By

    record = record_of(run_dir, "spri", PROMPTS[0])
    open_page(browser, viewer.url, f"#/record/{record['id']}", "record-view")

    columns = {
        column.get_attribute("data-mode"): column.find_element(
            By.CSS_SELECTOR, '[data-testid="same-prompt-response"]'
        ).text
        for column in browser.find_elements(By.CSS_SELECTOR, '[data-testid="same-prompt-column"]')
    }
    assert columns == {mode: record_of(run_dir, mode, PROMPTS[0])["response"] for mode in MODES}


def test_a_record_without_replayed_calls_has_no_replayed_column(browser, viewer, run_dir):
    from selenium.webdriver.common.by import By

    record = record_of(run_dir, "spri", PROMPTS[0])
    open_page(browser, viewer.url, f"#/record/{record['id']}", "record-view")

    headings = [th.text for th in browser.find_elements(By.CSS_SELECTOR, "#usage-table thead th")]
    assert headings == ["role", "model", "calls", "prompt tokens", "completion tokens"]


def test_a_failed_records_usage_says_the_failed_call_is_not_counted(browser, viewer, run_dir):
    from selenium.webdriver.common.by import By

    record = record_of(run_dir, "spri", FAILING_PROMPT)
    assert record["status"] == "failed" and record["usage"] == {}, "the fake model refuses its first call"
    open_page(browser, viewer.url, f"#/record/{record['id']}", "record-view")

    assert browser.find_element(By.ID, "usage-table").text == (
        "No completed model call: the call that failed (the error above) is not counted."
    )


@pytest.fixture(scope="module")
def crafted_export(run_dir: Path, tmp_path_factory) -> tuple[str, dict]:
    """The export of one spri record made to repeat its draft word for word in its revision, with replayed calls
    (a resumed run's): its file:// URL and the record."""
    from spri_sft.cli import main

    folder = tmp_path_factory.mktemp("crafted")
    record = record_of(run_dir, "spri", PROMPTS[0])
    draft = next(r["text"] for r in record["rounds"] if r["stage"] == "response")
    rounds = [{**r, "text": draft} if r["stage"] == "response" else r for r in record["rounds"]]
    usage = {role: {**use, "replayed_calls": 2 if role == "base" else 0} for role, use in record["usage"].items()}
    crafted = {**record, "id": "crafted-record-1", "rounds": rounds, "response": draft, "usage": usage}
    (folder / "records.jsonl").write_text(json.dumps(crafted) + "\n")
    assert main(["view", str(folder / "records.jsonl"), "--export", str(folder / "crafted.html")]) == 0
    return (folder / "crafted.html").as_uri(), crafted


def test_a_revision_that_repeats_the_previous_version_says_unchanged(browser, crafted_export):
    from selenium.webdriver.common.by import By

    page_url, record = crafted_export
    open_page(browser, page_url, f"#/record/{record['id']}", "record-view")
    second = browser.find_element(By.CSS_SELECTOR, '[data-testid="response-round"][data-round="2"]')

    assert second.find_element(By.CSS_SELECTOR, '[data-testid="version-unchanged"]').text == (
        "unchanged: the same text as the draft"
    )
    assert not second.find_elements(By.CSS_SELECTOR, '[data-testid="version-text"]')


def test_replayed_calls_get_their_column(browser, crafted_export):
    from selenium.webdriver.common.by import By

    page_url, record = crafted_export
    open_page(browser, page_url, f"#/record/{record['id']}", "record-view")

    replayed = {row.get_attribute("data-role"): row.find_elements(By.TAG_NAME, "td")[-1].text
                for row in browser.find_elements(By.CSS_SELECTOR, '[data-testid="usage-row"]')}  # fmt: skip
    assert browser.find_elements(By.CSS_SELECTOR, "#usage-table thead th")[-1].text == "replayed"
    assert replayed == {"base": "2", "critic": ""}


# -- decisions -------------------------------------------------------------------------------------------


def test_excluding_a_record_in_the_page_appends_one_decision_and_format_drops_exactly_that_record(
    browser, viewer, run_dir, decisions_file, tmp_path
):
    from selenium.webdriver.common.by import By

    from spri_sft.cli import main

    record = record_of(run_dir, "spri", PROMPTS[2])
    before = decision_lines(decisions_file)
    open_page(browser, viewer.url, f"#/record/{record['id']}", "record-view")
    browser.find_element(By.ID, "decision-reason").send_keys("too simple for the set")
    browser.find_element(By.ID, "decision-exclude").click()
    wait_for(
        browser,
        lambda d: d.find_element(By.ID, "decision-current").text == "excluded: too simple for the set",
        "the decision",
    )

    appended = decision_lines(decisions_file)[len(before) :]
    assert [(d["id"], d["mode"], d["decision"], d["reason"], d["who"]) for d in appended] == [
        (record["id"], "spri", "exclude", "too simple for the set", "browser-test")
    ]

    dataset = tmp_path / "dataset"
    spri_records = str(run_dir / "spri" / "records.jsonl")
    argv = ["format", "--records", spri_records, "--output_dir", str(dataset), "--truthfulqa_file", "none",
            "--validation_fraction", "0"]  # fmt: skip
    assert main(argv) == 0
    rows = [json.loads(line) for line in (dataset / "train.jsonl").read_text().splitlines()]
    dropped = [json.loads(line) for line in (dataset / "dropped.jsonl").read_text().splitlines()]
    assert {row["id"] for row in rows} == {
        r["id"] for r in records_of(run_dir, "spri") if r["status"] == "accepted"
    } - {record["id"]}
    assert [d["id"] for d in dropped if d["reason"] == "review"] == [record["id"]]


def test_a_read_only_viewer_shows_no_decision_buttons(browser, read_only_viewer, run_dir):
    from selenium.webdriver.common.by import By

    record = record_of(run_dir, "spri", PROMPTS[0])
    open_page(browser, read_only_viewer.url, f"#/record/{record['id']}", "record-view")

    assert browser.find_elements(By.ID, "decisions-off")
    assert not browser.find_elements(By.CSS_SELECTOR, "#decision-panel, #decision-exclude, #decision-keep")


def test_a_viewer_behind_an_access_token_works_from_its_printed_url_through_an_http_only_cookie(browser, records_files):
    # --host beyond 127.0.0.1 needs SPRI_SFT_VIEW_TOKEN; 127.0.0.2 is such a host that still stays on this machine.
    from selenium.webdriver.common.by import By

    token = "browser-test-access-token"
    running = Viewer(records_files, "--host", "127.0.0.2", env={"SPRI_SFT_VIEW_TOKEN": token})
    try:
        assert f"token={token}" in running.url
        open_page(browser, running.url, "#/", "overview-view")  # the page's own API calls carry no token
        wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, '[data-testid="mode-card"]')) == 3, "modes")
        cookies = {(c["name"], c["httpOnly"], c.get("sameSite")) for c in browser.get_cookies()}
        assert browser.execute_script("return document.cookie") == ""
    finally:
        running.stop()
    assert [(http_only, same_site) for _, http_only, same_site in cookies] == [(True, "Strict")]


def test_a_decision_posted_without_the_page_token_is_refused(viewer, run_dir, decisions_file):
    before = decision_lines(decisions_file)
    body = {"id": record_of(run_dir, "spri", PROMPTS[3])["id"], "decision": "exclude", "reason": None}

    assert post_decision(viewer, body, {"Content-Type": "application/json"}) == 403
    assert decision_lines(decisions_file) == before


def test_a_decision_posted_from_another_origin_is_refused_even_with_the_token(viewer, run_dir, decisions_file):
    before = decision_lines(decisions_file)
    body = {"id": record_of(run_dir, "spri", PROMPTS[3])["id"], "decision": "exclude", "reason": None}
    headers = {"Content-Type": "application/json", "X-SPRI-Token": page_token(viewer), "Origin": "http://127.0.0.1:1"}

    assert post_decision(viewer, body, headers) == 403
    assert decision_lines(decisions_file) == before


def test_a_form_on_another_site_cannot_post_a_decision(browser, viewer, run_dir, decisions_file):
    # The classic cross-site request: a page on another origin submits a form to the viewer. A form may post
    # text/plain with any body to any origin, with no CORS preflight to stop it: only the server's checks do.
    from selenium.webdriver.common.by import By

    record_id = record_of(run_dir, "spri", PROMPTS[3])["id"]
    before = decision_lines(decisions_file)
    with other_site(
        f'<form method="post" action="{viewer.origin}/api/decisions" enctype="text/plain">'
        f'<input name=\'{{"id": "{record_id}", "decision": "exclude", "reason": "\' value=\'x"}}\'></form>'
        "<script>document.forms[0].submit()</script>"
    ) as attacker_url:
        browser.get(attacker_url)
        wait_for(browser, lambda d: d.current_url.startswith(viewer.origin), "the form's submission")
    assert "error" in json.loads(browser.find_element(By.TAG_NAME, "body").text), "the viewer answered with a refusal"
    assert decision_lines(decisions_file) == before


# -- model text is text ----------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [SCRIPT_PAYLOAD, IMG_PAYLOAD], ids=["script", "img-onerror"])
@pytest.mark.parametrize("served", ["server", "export"])
def test_html_in_a_models_answer_is_shown_as_text_and_never_runs(browser, request, run_dir, served, payload):
    # The exported file has no Content-Security-Policy to fall back on (the server's forbids inline scripts):
    # there, markup set as HTML would run.
    from selenium.webdriver.common.by import By

    page_url = request.getfixturevalue("viewer").url if served == "server" else request.getfixturevalue("exported_page")
    record = next(r for r in records_of(run_dir, "spri") if payload in r["prompt"])
    assert record["response"] == payload

    open_page(browser, page_url, "#/records?q=" + urllib.parse.quote(record["prompt"].split(":")[0]), "record-row")
    prompts = [e.text for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="record-row"] .prompt-cell')]
    assert prompts == [record["prompt"]] * len(MODES)
    assert browser.execute_script("return document.querySelectorAll('#view img, #view script').length") == 0
    assert browser.execute_script("return window.__pwned") is None

    open_page(browser, page_url, f"#/record/{record['id']}", "record-view")
    responses = [e.text for e in browser.find_elements(By.CSS_SELECTOR, '[data-testid="same-prompt-response"]')]
    assert browser.find_element(By.ID, "record-prompt").text == record["prompt"]
    assert responses == [payload] * len(MODES)
    assert browser.execute_script("return document.querySelectorAll('#view img, #view script').length") == 0
    assert browser.execute_script("return window.__pwned") is None


def test_the_three_views_log_no_browser_error(browser, viewer, run_dir):
    browser.get_log("browser")  # what earlier tests left (the other site's refused form) is theirs
    record = record_of(run_dir, "self-refine", PROMPTS[0])
    for route, ready in (
        ("#/", "overview-view"),
        ("#/records", "record-row"),
        (f"#/record/{record['id']}", "record-view"),
    ):
        open_page(browser, viewer.url, route, ready)

    assert [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"] == []
