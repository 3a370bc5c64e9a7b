"""`spri-sft view PATH --export FILE.html --sample N`: one self-contained HTML file (the page's stylesheet and
script inlined, a stratified sample of records embedded as JSON that no record's text can break out of)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from review_records import FAILED_ID, records_of

from spri_sft.cli import main
from spri_sft.errors import UserError
from spri_sft.review.export import export_html, stratified_sample
from spri_sft.review.server import STATIC_DIR

pytestmark = pytest.mark.timeout(120)


def embedded(page: str) -> dict:
    found = re.search(r'<script type="application/json" id="spri-data">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


# -- the sample


def test_the_sample_has_its_size_and_every_mode_and_status():
    rows = [(f"a{i}", "spri", "accepted") for i in range(90)] + [(f"m{i}", "spri", "max_rounds") for i in range(8)]
    rows += [("f0", "spri", "failed")] + [(f"d{i}", "direct", "accepted") for i in range(100)]
    chosen = stratified_sample(rows, 20)
    strata = Counter(next((m, s) for i, m, s in rows if i == c) for c in chosen)
    assert len(chosen) == 20 and strata[("spri", "failed")] == 1 and strata[("spri", "max_rounds")] == 1
    assert strata[("spri", "accepted")] + strata[("direct", "accepted")] == 18


def test_the_same_seed_draws_the_same_sample_whatever_the_order_of_the_rows():
    rows = [(f"r{i}", "spri", "accepted" if i % 3 else "max_rounds") for i in range(50)]
    assert stratified_sample(rows, 10, seed=1) == stratified_sample(rows[::-1], 10, seed=1)
    assert stratified_sample(rows, 10, seed=1) != stratified_sample(rows, 10, seed=2)


def test_a_sample_as_large_as_the_records_is_all_of_them():
    rows = [(f"r{i}", "direct", "accepted") for i in range(5)]
    assert sorted(stratified_sample(rows, 50)) == [f"r{i}" for i in range(5)]


# -- the file


def test_the_export_is_the_page_with_its_assets_inlined_and_no_outside_reference(run, tmp_path):
    page = export_html(run, tmp_path / "sample.html", sample=5).read_text()
    assert (STATIC_DIR / "app.js").read_text() in page and (STATIC_DIR / "app.css").read_text() in page
    assert not re.search(r'(src|href)="(?!#|data:)[^"]+"', page), "nothing to fetch: no script, style or link to load"
    assert '<meta name="spri-read-only" content="true">' in page and '<meta name="spri-token" content="">' in page


def test_the_export_embeds_the_whole_overview_and_a_sample_of_whole_records(run, tmp_path):
    data = embedded(export_html(run, tmp_path / "sample.html", sample=5).read_text())
    assert {mode: m["records"] for mode, m in data["overview"]["modes"].items()} == {"direct": 6, "spri": 7}
    every = {r["id"]: r for mode in ("spri", "direct") for r in records_of(run, mode)}
    assert len(data["records"]) == 5 and all(every[r["id"]] == r for r in data["records"])
    assert FAILED_ID in {r["id"] for r in data["records"]}, "the one failed record is a stratum of its own"
    assert data["sample"] == {"records": 5, "of": 13, "seed": 0}


def test_no_record_text_can_end_the_data_element(run, tmp_path):
    records = run / "generate" / "direct" / "records.jsonl"
    hostile = {
        **records_of(run, "direct")[0], "id": "hostile000000001", "response": "</script><script>window.__pwned=1</script><!--"
    }  # fmt: skip
    records.write_text(json.dumps(hostile) + "\n")
    page = export_html(records, tmp_path / "sample.html").read_text()
    assert "</script><script>window.__pwned" not in page
    assert embedded(page)["records"] == [hostile]


def test_the_command_writes_the_export_and_says_where(run, tmp_path, capsys):
    out = tmp_path / "shared" / "sample.html"
    assert main(["view", str(run), "--export", str(out), "--sample", "3"]) == 0
    assert capsys.readouterr().out == f"[spri-sft] view: exported to {out}\n"
    assert len(embedded(out.read_text())["records"]) == 3


def test_a_sample_below_one_is_refused_naming_the_flag(run, tmp_path):
    with pytest.raises(UserError, match=r"--sample must be 1 or more \(got 0\)"):
        export_html(run, tmp_path / "sample.html", sample=0)
