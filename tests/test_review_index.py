"""The viewer's index: which records files a PATH names, and an SQLite index of them that is built once,
follows a file that grows, is rebuilt when a file is rewritten, and reads each record by its byte offset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from review_records import FAILED_ID, PROMPTS, records_of

from spri_sft.errors import UserError
from spri_sft.generate.store import RecordStore
from spri_sft.review.index import RecordIndex, open_index, records_files, run_root

pytestmark = pytest.mark.timeout(120)


def index_of(run: Path, tmp_path: Path) -> RecordIndex:
    return RecordIndex(records_files([run]), tmp_path / "index.sqlite")


# -- PATH


def test_a_pipeline_dir_names_the_records_of_each_of_its_modes(run):
    generated = run / "generate"
    assert records_files([run]) == [generated / "spri" / "records.jsonl", generated / "direct" / "records.jsonl"]
    assert run_root([run]) == run


def test_a_pipeline_dirs_generate_dir_outside_the_run_is_where_its_records_are_read(run, tmp_path):
    shared = tmp_path / "shared-generation"
    shutil.move(run / "generate", shared)
    (run / "config.yaml").write_text(yaml.safe_dump({"modes": ["direct"], "generate_dir": str(shared)}))
    assert records_files([run]) == [shared / "direct" / "records.jsonl"]


def test_a_generate_dir_and_a_records_file_name_their_records(run):
    spri, direct = run / "generate" / "spri", run / "generate" / "direct" / "records.jsonl"
    assert records_files([spri, direct]) == [spri / "records.jsonl", direct]
    assert run_root([spri, direct]) is None


def test_the_same_file_named_twice_is_read_once(run):
    spri = run / "generate" / "spri"
    assert records_files([spri, spri / "records.jsonl"]) == [spri / "records.jsonl"]


def test_a_path_that_does_not_exist_is_one_line_naming_it(tmp_path):
    with pytest.raises(UserError, match=r"^view: .*/nowhere does not exist$"):
        records_files([tmp_path / "nowhere"])


def test_a_directory_without_records_says_which_paths_it_takes(tmp_path):
    with pytest.raises(
        UserError, match=r"neither a pipeline output dir .* a generate output dir .* nor a records file"
    ):
        records_files([tmp_path])


def test_the_index_lives_in_the_review_dir_of_the_path(run):
    index = open_index([run])
    assert index.index_file == str(run / "review" / "index.sqlite")
    assert index.decisions_file == run / "review" / "decisions.jsonl"
    index.close()


# -- the rows


def test_each_record_is_indexed_with_its_list_columns(run, tmp_path):
    index = index_of(run, tmp_path)
    spri = {r["prompt"]: r for r in records_of(run, "spri")}
    passing = index.page({"mode": "spri", "status": "accepted", "page_size": "1"})["items"][0]
    assert passing["principles_score"] == passing["response_score"] == 5
    assert passing["principles_rounds"] == passing["response_rounds"] == 1
    record = next(r for r in spri.values() if r["id"] == passing["id"])
    assert passing["tokens"] == sum(u["prompt_tokens"] + u["completion_tokens"] for u in record["usage"].values())
    failing = index.page({"mode": "spri", "status": "max_rounds", "unscored": "0"})["items"]
    assert [(i["prompt"], i["response_score"], i["response_rounds"]) for i in failing] == [(PROMPTS[3], 2, 2)]
    assert [i["prompt"] for i in index.page({"unscored": "1"})["items"]] == [PROMPTS[4]]
    assert [i["id"] for i in index.page({"failed": "1"})["items"]] == [FAILED_ID]


def test_a_record_is_read_from_its_file_by_offset_whole(run, tmp_path):
    index = index_of(run, tmp_path)
    for record in records_of(run, "spri") + records_of(run, "direct"):
        assert index.record(record["id"]) == record


def test_an_unknown_id_has_no_record(run, tmp_path):
    assert index_of(run, tmp_path).record("no-such-id") is None


def test_same_prompt_is_the_other_modes_records_of_that_prompt(run, tmp_path):
    index = index_of(run, tmp_path)
    spri = next(r for r in records_of(run, "spri") if r["prompt"] == PROMPTS[2])
    direct = next(r for r in records_of(run, "direct") if r["prompt"] == PROMPTS[2])
    assert index.same_prompt(spri) == [{"mode": "direct", "record": direct}]


def test_the_overview_counts_each_modes_statuses_rounds_and_scores(run, tmp_path):
    spri = index_of(run, tmp_path).overview()["spri"]
    assert spri["records"] == 7
    assert spri["status"] == {"accepted": 4, "max_rounds": 2, "failed": 1}
    assert spri["failed_share"] == round(1 / 7, 4) and spri["unscored_share"] == round(1 / 7, 4)
    assert spri["rounds"]["response"] == {"1": 4, "2": 2}
    assert spri["final_score"]["response"] == {"None": 1, "2": 1, "5": 4}
    assert spri["calls_per_record"]["critic"] > 0 and spri["tokens_per_record"]["base"] > 0


def test_the_overview_lists_the_modes_in_the_order_of_the_runs_config(run, tmp_path):
    assert yaml.safe_load((run / "config.yaml").read_text())["modes"] == ["spri", "direct"]
    assert list(index_of(run, tmp_path).overview()) == ["spri", "direct"]


def test_the_overview_lists_the_modes_in_the_order_of_the_paths_given(run, tmp_path):
    generated = run / "generate"
    index = RecordIndex(records_files([generated / "spri", generated / "direct"]), tmp_path / "index.sqlite")
    assert list(index.overview()) == ["spri", "direct"]


def test_a_run_without_config_lists_its_modes_in_generates_order_of_modes(run, tmp_path):
    (run / "config.yaml").unlink()
    shutil.copytree(run / "generate" / "direct", run / "generate" / "aaa-custom")  # unknown: after the known ones
    assert [f.parent.name for f in records_files([run])] == ["spri", "direct", "aaa-custom"]


def test_the_same_prompts_other_modes_come_in_the_runs_order_of_modes(run, tmp_path):
    (run / "generate" / "self-refine").mkdir()
    (run / "generate" / "self-refine" / "records.jsonl").write_text(
        "".join(
            json.dumps({**r, "id": "sr-" + r["id"], "mode": "self-refine"}) + "\n" for r in records_of(run, "direct")
        )
    )
    (run / "config.yaml").write_text(yaml.safe_dump({"modes": ["self-refine", "spri", "direct"]}))
    spri = next(r for r in records_of(run, "spri") if r["prompt"] == PROMPTS[2])
    assert [other["mode"] for other in index_of(run, tmp_path).same_prompt(spri)] == ["self-refine", "direct"]


def test_a_mode_whose_records_no_critic_judged_has_no_unscored_share(run, tmp_path):
    overview = index_of(run, tmp_path).overview()
    assert (overview["direct"]["critic"], overview["direct"]["unscored_share"]) == (False, None)
    assert (overview["spri"]["critic"], overview["spri"]["unscored_share"]) == (True, round(1 / 7, 4))


# -- search, paging, sorting


def test_search_finds_words_of_the_prompt_and_of_the_final_response(run, tmp_path):
    index = index_of(run, tmp_path)
    assert {i["mode"] for i in index.page({"q": "Question 2"})["items"]} == {"spri", "direct"}
    assert index.page({"q": "Question 2 zebra"})["total"] == 0


def test_a_search_fts5_cannot_parse_is_searched_as_a_phrase(run, tmp_path):
    index = index_of(run, tmp_path)
    assert index.page({"q": 'salty" near'})["total"] == 12  # an unbalanced quote: the words as one phrase
    assert index.page({"q": "near:river"})["total"] == 12  # a filter of a column it does not have
    assert index.page({"q": "river:near"})["total"] == 0  # as a phrase, the words in that order


def test_pages_split_the_sorted_list(run, tmp_path):
    index = index_of(run, tmp_path)
    by_tokens = [i["tokens"] for i in index.page({"sort": "tokens", "order": "desc", "page_size": "100"})["items"]]
    assert by_tokens == sorted(by_tokens, reverse=True)
    first, second = (index.page({"sort": "tokens", "order": "desc", "page_size": "5", "page": str(p)}) for p in (1, 2))
    assert first["total"] == second["total"] == 13
    assert [i["tokens"] for i in first["items"] + second["items"]] == by_tokens[:10]


def test_an_unknown_sort_is_refused_naming_the_choices(run, tmp_path):
    with pytest.raises(ValueError, match=r"sort must be one of id, score"):
        index_of(run, tmp_path).page({"sort": "length"})


# -- keeping up with the files


def append(path: Path, record: dict, newline: bool = True) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + ("\n" if newline else ""))


def test_lines_appended_to_a_file_are_added_without_a_rebuild(run, tmp_path, monkeypatch):
    index = index_of(run, tmp_path)
    rebuilds = []
    monkeypatch.setattr(index, "_rebuild", lambda paths: rebuilds.append(paths))
    new = {**records_of(run, "direct")[0], "id": "appended00000001", "prompt": "Question 7: a new prompt"}
    append(run / "generate" / "direct" / "records.jsonl", new)
    index.refresh()
    assert index.record("appended00000001") == new
    assert index.count() == 14 and rebuilds == []


def test_a_torn_last_line_is_skipped_and_counted_then_indexed_once_complete(run, tmp_path):
    records = run / "generate" / "direct" / "records.jsonl"
    line = json.dumps({**records_of(run, "direct")[0], "id": "torn000000000001"}) + "\n"
    with records.open("a") as handle:
        handle.write(line[:40])  # a kill mid-write
    index = index_of(run, tmp_path)
    assert (index.count(), index.torn_bytes()) == (13, 40)
    with records.open("a") as handle:
        handle.write(line[40:])
    index.refresh()
    assert (index.count(), index.torn_bytes()) == (14, 0)
    assert index.record("torn000000000001")["id"] == "torn000000000001"


def test_a_malformed_line_before_the_last_is_an_error_naming_file_and_line(run, tmp_path):
    records = run / "generate" / "direct" / "records.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    records.write_text("".join(lines[:2] + ["{not json\n"] + lines[2:]))
    with pytest.raises(UserError, match=r"direct/records.jsonl:3: not a valid record line; fix or remove it"):
        index_of(run, tmp_path)


def test_a_rewritten_file_is_indexed_again(run, tmp_path):
    index = index_of(run, tmp_path)
    store = RecordStore(run / "generate" / "spri" / "records.jsonl")
    store.drop({FAILED_ID})  # what a rerun retrying failed records does
    store.close()
    index.refresh()
    assert index.count() == 12 and index.record(FAILED_ID) is None
    assert all(index.record(r["id"]) == r for r in records_of(run, "spri"))


def test_an_index_on_disk_is_reused_by_the_next_viewer(run, tmp_path, monkeypatch):
    index_of(run, tmp_path).close()
    monkeypatch.setattr(RecordIndex, "_rebuild", lambda self, paths: pytest.fail("rebuilt an up-to-date index"))
    assert index_of(run, tmp_path).count() == 13


def test_a_record_id_twice_keeps_the_first_and_counts_the_other(run, tmp_path):
    copy = tmp_path / "copy.jsonl"
    first = records_of(run, "direct")[0]
    copy.write_text(json.dumps({**first, "response": "another answer"}) + "\n")
    index = RecordIndex(records_files([run, copy]), tmp_path / "index.sqlite")
    assert index.count() == 13 and index.duplicates == 1
    assert index.record(first["id"]) == first


def test_a_file_removed_while_viewing_leaves_the_index_and_comes_back_when_written_again(run, tmp_path):
    index = index_of(run, tmp_path)
    direct = run / "generate" / "direct" / "records.jsonl"
    kept = direct.read_text()
    direct.unlink()  # e.g. a rerun redoing that mode's generation
    index.refresh()
    assert index.modes() == ["spri"]
    direct.write_text(kept)
    index.refresh()
    assert index.modes() == ["spri", "direct"] and index.count() == 13


def test_sorting_by_score_puts_records_without_a_score_last_either_way(run, tmp_path):
    index = index_of(run, tmp_path)
    for order in ("asc", "desc"):
        scores = [i["response_score"] for i in index.page({"mode": "spri", "sort": "score", "order": order})["items"]]
        scored = [s for s in scores if s is not None]
        assert scores == scored + [None, None] and scored == sorted(scored, reverse=order == "desc")
