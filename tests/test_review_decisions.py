"""A reviewer's decisions: an append-only file, last decision per record wins, and `spri-sft format` obeys it."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_format import FILLER, build, make_record, row_ids

from spri_sft.errors import UserError
from spri_sft.review.decisions import append_decision, excluded_ids, read_decisions, review_dir_of


def test_a_decision_line_says_what_who_when_and_why(tmp_path: Path):
    path = tmp_path / "review" / "decisions.jsonl"

    written = append_decision(path, "r1", "spri", "exclude", "hallucinated citation", "ana")

    line = json.loads(path.read_text())
    assert line == written
    assert {k: line[k] for k in ("id", "mode", "decision", "reason", "who")} == {
        "id": "r1",
        "mode": "spri",
        "decision": "exclude",
        "reason": "hallucinated citation",
        "who": "ana",
    }
    assert line["when"].endswith("+00:00"), "ISO-8601 in UTC"


def test_the_last_decision_per_record_wins_and_every_earlier_one_stays_in_the_file(tmp_path: Path):
    path = tmp_path / "decisions.jsonl"
    append_decision(path, "r1", "spri", "exclude", "off topic", "ana")
    append_decision(path, "r2", "spri", "exclude", None, "ana")
    append_decision(path, "r1", "spri", "keep", None, "bo")

    assert excluded_ids(path) == {"r2": None}
    assert read_decisions(path)["r1"]["who"] == "bo"
    assert len(path.read_text().splitlines()) == 3, "append-only: nothing overwritten"


def test_no_file_is_no_decisions(tmp_path: Path):
    assert read_decisions(tmp_path / "decisions.jsonl") == {}


def test_a_torn_last_line_is_ignored_and_counted_and_the_next_append_cuts_it_off(tmp_path: Path):
    path = tmp_path / "decisions.jsonl"
    append_decision(path, "r1", "spri", "exclude", None, "ana")
    path.write_bytes(path.read_bytes() + b'{"id": "r2", "mode": "sp')  # killed mid-write

    decisions = read_decisions(path)
    assert list(decisions) == ["r1"] and decisions.torn_bytes == len(b'{"id": "r2", "mode": "sp')

    append_decision(path, "r3", "spri", "exclude", None, "ana")
    assert list(read_decisions(path)) == ["r1", "r3"]
    assert read_decisions(path).torn_bytes == 0


def test_a_hand_written_last_decision_without_a_newline_counts_and_is_not_cut_off(tmp_path: Path):
    path = tmp_path / "decisions.jsonl"
    line = {
        "id": "r1",
        "mode": "spri",
        "decision": "exclude",
        "reason": None,
        "who": "ana",
        "when": "2026-01-01T00:00:00Z",
    }
    path.write_text(json.dumps(line))

    assert excluded_ids(path) == {"r1": None}
    append_decision(path, "r2", "spri", "exclude", None, "ana")
    assert excluded_ids(path) == {"r1": None, "r2": None}


@pytest.mark.parametrize(
    ("bad_line", "named"),
    [
        ("{not json", "malformed JSON line"),
        ('{"id": "r1", "mode": "spri", "decision": "drop", "reason": null, "who": "a", "when": "t"}', "'decision'"),
        ('{"mode": "spri", "decision": "keep", "reason": null, "who": "a", "when": "t"}', "'id'"),
        ('{"id": "r1", "mode": "spri", "decision": "keep", "reason": 3, "who": "a", "when": "t"}', "'reason'"),
    ],
)
def test_a_bad_line_before_the_last_is_an_error_naming_the_file_line_and_field(tmp_path: Path, bad_line, named):
    path = tmp_path / "decisions.jsonl"
    path.write_text(bad_line + "\n")
    append_decision(path, "r2", "spri", "exclude", None, "ana")  # the bad line is complete: never cut off

    with pytest.raises(UserError, match=rf"^{path}:1: .*{named}"):
        read_decisions(path)


def test_an_unknown_decision_is_refused_before_anything_is_written(tmp_path: Path):
    path = tmp_path / "decisions.jsonl"
    with pytest.raises(UserError, match="'decision' must be 'exclude' or 'keep'"):
        append_decision(path, "r1", "spri", "delete", None, "ana")
    assert not path.exists()


def test_decisions_appended_from_many_threads_are_whole_lines(tmp_path: Path):
    path = tmp_path / "decisions.jsonl"
    threads = [
        threading.Thread(target=append_decision, args=(path, f"r{n}", "spri", "exclude", "x" * 5000, "ana"))
        for n in range(20)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(read_decisions(path)) == 20


def test_two_viewers_appending_to_one_file_at_once_leave_whole_lines(tmp_path: Path):
    path = tmp_path / "decisions.jsonl"
    append_many = (
        "import sys\nfrom spri_sft.review.decisions import append_decision\n"
        "for n in range(40): append_decision(sys.argv[1], f'{sys.argv[2]}{n}', 'spri', 'exclude', 'x' * 3000, 'ana')"
    )
    viewers = [subprocess.Popen([sys.executable, "-c", append_many, str(path), name]) for name in ("a", "b")]
    assert [viewer.wait(timeout=60) for viewer in viewers] == [0, 0]

    decisions = read_decisions(path)
    assert len(decisions) == 80 and decisions.torn_bytes == 0


def test_the_review_dir_of_a_run_or_generate_dir_is_inside_it_and_of_records_files_beside_the_first(tmp_path: Path):
    (tmp_path / "run").mkdir()
    (tmp_path / "a").mkdir()
    records = tmp_path / "a" / "records.jsonl"
    records.write_text("")
    assert review_dir_of(tmp_path / "run") == tmp_path / "run" / "review"
    assert review_dir_of([records, tmp_path / "b" / "records.jsonl"]) == tmp_path / "a" / "review"


# -- spri-sft format obeys them ---------------------------------------------------------------

RECORDS = [make_record(n) for n in range(1, 5)] + FILLER


def review_file(tmp_path: Path) -> Path:
    """Where format looks by default: review/decisions.jsonl beside the records file `build` writes."""
    return tmp_path / "review" / "decisions.jsonl"


def test_two_excluded_records_are_exactly_the_two_rows_missing_counted_by_reason(tmp_path: Path):
    _, everything = build(tmp_path, RECORDS, name="all", review_file="none")
    append_decision(review_file(tmp_path), "rec001", "spri", "exclude", "off topic", "ana")
    append_decision(review_file(tmp_path), "rec003", "spri", "exclude", None, "bo")

    summary, reviewed = build(tmp_path, RECORDS, name="reviewed")

    assert row_ids(everything) - row_ids(reviewed) == {"rec001", "rec003"}
    assert row_ids(reviewed) < row_ids(everything)
    assert summary["dropped"]["review"] == 2
    assert summary["review_reasons"] == {"off topic": 1, "no reason given": 1}
    assert summary["review"] == {"file": str(review_file(tmp_path)), "excluded": 2, "kept": 0}
    lines = [json.loads(line) for line in (reviewed / "dropped.jsonl").read_text().splitlines()]
    assert [(e["id"], e["reason"], e["detail"], e["who"]) for e in lines] == [
        ("rec001", "review", "off topic", "ana"),
        ("rec003", "review", "", "bo"),
    ]


def test_a_keep_after_an_exclude_wins_and_is_counted(tmp_path: Path):
    append_decision(review_file(tmp_path), "rec002", "spri", "exclude", "off topic", "ana")
    append_decision(review_file(tmp_path), "rec002", "spri", "keep", "looked again", "ana")

    summary, out = build(tmp_path, RECORDS)

    assert "rec002" in row_ids(out)
    assert summary["dropped"]["review"] == 0
    assert summary["review"]["kept"] == 1


def test_a_torn_last_decision_is_ignored_and_the_others_obeyed(tmp_path: Path):
    append_decision(review_file(tmp_path), "rec001", "spri", "exclude", None, "ana")
    with review_file(tmp_path).open("a") as handle:
        handle.write('{"id": "rec002", "mode": "spri", "decis')  # a viewer killed mid-write

    summary, out = build(tmp_path, RECORDS)

    assert summary["dropped"]["review"] == 1
    assert {"rec001", "rec002"} & row_ids(out) == {"rec002"}


def test_decisions_on_records_not_in_the_files_change_nothing(tmp_path: Path):
    append_decision(review_file(tmp_path), "another-mode-record", "direct", "exclude", None, "ana")

    summary, out = build(tmp_path, RECORDS)

    assert summary["dropped"]["review"] == 0 and len(row_ids(out)) == len(RECORDS)


def test_review_file_none_turns_the_review_off(tmp_path: Path):
    append_decision(review_file(tmp_path), "rec001", "spri", "exclude", None, "ana")

    summary, out = build(tmp_path, RECORDS, review_file="none")

    assert "rec001" in row_ids(out) and summary["review"]["file"] is None


def test_a_review_file_that_is_not_there_names_review_file(tmp_path: Path):
    with pytest.raises(UserError, match=r"^review_file .*decisions.jsonl: not found"):
        build(tmp_path, RECORDS, review_file=str(tmp_path / "elsewhere" / "decisions.jsonl"))


def test_the_card_shows_the_exclusions_by_reason(tmp_path: Path):
    append_decision(review_file(tmp_path), "rec001", "spri", "exclude", "off topic", "ana")
    append_decision(review_file(tmp_path), "rec002", "spri", "keep", None, "ana")

    _, out = build(tmp_path, RECORDS)

    card = (out / "README.md").read_text()
    assert (
        "| review | a reviewer did not exclude it in `decisions.jsonl` (`spri-sft view`); excluded by reason: "
        f"off topic 1; 1 kept by decision | 1 | {len(RECORDS) - 1} |" in card
    )
