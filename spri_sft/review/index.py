"""What `spri-sft view` reads: the records files of a PATH, and an SQLite index of them.

PATH is a pipeline output dir (its config.yaml's `modes`, each mode's records in its generation dir:
`generate_dir` or `<run>/generate`, `/<mode>/records.jsonl`), a generate output dir (its records.jsonl),
or records files; several PATHs view several modes at once.

The index (`<review dir>/index.sqlite`) holds one row per record with the columns the list filters and
sorts on, an FTS5 table over each record's prompt and final response, and each record's file and byte
range: a record page reads its record from the records file by offset, so no request ever loads every
record. It is built once; when a file only grew (a generation still running) just the new lines are
added, and any other change (a file rewritten, e.g. by generate dropping failed records to retry them,
or another set of files) rebuilds it. A torn last line (a generation killed mid-write, or still writing
it) is skipped and counted until it is complete; a malformed line elsewhere is an error naming FILE:LINE,
as generate's own reading of records.jsonl is.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from spri_sft.errors import UserError
from spri_sft.generate.modes import MODES
from spri_sft.review.decisions import DECISIONS_FILE, Decisions, read_decisions, review_dir_of

INDEX_FILE = "index.sqlite"
SCHEMA_VERSION = "3"  # a stored index of another version is rebuilt
SNIPPET_CHARS = 300  # of the prompt, in the list
ERROR_CHARS = 300
TAIL_CHECK_BYTES = 4096  # the indexed end of a file that must be unchanged for new lines to be appended
MISSING = -1  # the stored size of a records file removed since the viewer started
BATCH = 2000  # records per insert batch while indexing

SORT_COLUMNS = {
    "id": "r.id",
    "mode": "r.mode",
    "status": "r.status",
    "tokens": "r.tokens",
    "rounds": "(coalesce(r.principles_rounds, 0) + coalesce(r.response_rounds, 0))",
    # "score" sorts by the score stage the filter names (response unless principles), records without one last;
    # ties keep file order (rowid), which the columns' indexes hold too.
}
LIST_COLUMNS = (
    "id", "mode", "status", "prompt", "principles_score", "response_score", "principles_rounds", "response_rounds",
    "unscored", "failed", "prompt_source", "sft_split", "source_id", "tokens",
)  # fmt: skip


# -- PATH -> records files ---------------------------------------------------------------------------------


def records_files(paths: Sequence[str | Path]) -> list[Path]:
    """The records files that PATHs name (module docstring), each once, in order."""
    if not paths:
        raise UserError("view: give a PATH (a pipeline output dir, a generate output dir or records files)")
    found: list[Path] = []
    for path in map(Path, paths):
        for file in _records_files_of(path):
            if file.resolve() not in {f.resolve() for f in found}:
                found.append(file)
    return found


def _records_files_of(path: Path) -> list[Path]:
    if not path.exists():
        raise UserError(f"view: {path} does not exist")
    if path.is_file():
        return [path]
    if (path / "records.jsonl").is_file():
        return [path / "records.jsonl"]
    modes = pipeline_modes(path)
    if modes:
        files = [directory / "records.jsonl" for directory in modes.values()]
        present = [file for file in files if file.is_file()]
        if not present:
            listed = ", ".join(map(str, files))
            raise UserError(f"view: {path} is a pipeline output dir whose modes have no records yet (none of {listed})")
        return present
    raise UserError(
        f"view: {path} is neither a pipeline output dir (config.yaml with modes, or generate/<mode>/records.jsonl), "
        "a generate output dir (records.jsonl) nor a records file"
    )


def pipeline_modes(run: Path) -> dict[str, Path]:
    """A pipeline output dir's generation dir per mode ({} when `run` is not one): from its saved config.yaml
    (its `generate_dir` may be outside the run), else its generate/<mode>/ dirs holding records."""
    config_file = run / "config.yaml"
    config = _read_yaml(config_file) if config_file.is_file() else None
    if isinstance(config, dict) and isinstance(config.get("modes"), list):
        # The pipeline writes into <run>/generate unless generate_dir names another place; a relative
        # generate_dir was relative to where the run started, so it is tried from here and from the run's parent.
        base = run / "generate"
        if config.get("generate_dir"):
            named = Path(config["generate_dir"])
            base = next((p for p in (named, run.parent / named) if p.is_dir()), named)
        return {str(mode): base / str(mode) for mode in config["modes"]}
    generate = run / "generate"
    if generate.is_dir():
        found = [d for d in generate.iterdir() if (d / "records.jsonl").is_file()]
        return {d.name: d for d in sorted(found, key=lambda d: mode_rank(d.name))}
    return {}


def shown_paths(paths: Sequence[str | Path]) -> str:
    """PATHs as the page's header shows them: as given, the home dir as ~, and several in one folder as
    `FOLDER: REST, REST` (the full records files are the header's tooltip)."""
    home = str(Path.home())
    given = [str(p) for p in paths]
    given = ["~" + p[len(home) :] if home != "/" and (p == home or p.startswith(home + "/")) else p for p in given]
    if len(given) < 2:
        return " ".join(given)
    folder = os.path.commonpath(given) if all(os.path.isabs(p) == os.path.isabs(given[0]) for p in given) else ""
    if not folder or folder in given or folder == "/":
        return ", ".join(given)
    return f"{Path(folder).name}: " + ", ".join(os.path.relpath(p, folder) for p in given)


def run_root(paths: Sequence[str | Path]) -> Path | None:
    """The pipeline output dir among PATHs (its report's figures are shown), or None."""
    for path in map(Path, paths):
        if path.is_dir() and not (path / "records.jsonl").is_file() and pipeline_modes(path):
            return path
    return None


def mode_rank(mode: str) -> tuple[int, str]:
    """A mode's place where nothing else orders it: generate's own order of its modes, unknown ones after, by name."""
    return (MODES.index(mode) if mode in MODES else len(MODES), mode)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return None  # not a pipeline's config: the caller looks for the other kinds of PATH


def open_index(paths: Sequence[str | Path]) -> RecordIndex:
    """The index of PATHs' records in their review dir (kept in memory when that is not writable, e.g. someone
    else's run viewed read-only), with the review's decisions file."""
    review_dir = review_dir_of(list(paths))
    files = records_files(paths)
    index_file = str(review_dir / INDEX_FILE)
    fresh = not Path(index_file).is_file()
    try:
        review_dir.mkdir(parents=True, exist_ok=True)
        with open(index_file, "ab"):
            pass
    except OSError as err:
        print(f"[spri-sft] view: {review_dir} is not writable ({err.strerror}): the index is kept in memory")
        index_file = ":memory:"
    size = sum(f.stat().st_size for f in files if f.is_file())
    if fresh and size > 50_000_000:  # seconds of work (about 10 s per 600 MB): say why nothing shows yet
        print(f"[spri-sft] view: indexing {size / 1e6:,.0f} MB of records once (kept in {index_file})", flush=True)
    return RecordIndex(files, index_file, review_dir / DECISIONS_FILE)


# -- one record -> its row -----------------------------------------------------------------------------------


def prompt_hash(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()[:16]


def record_row(record: dict) -> dict[str, Any]:
    """The index columns of a record (its list item, plus what the index needs to find and match it)."""
    last: dict[str, dict] = {}
    unscored = critiqued = False
    for round_ in record.get("rounds") or []:
        if isinstance(round_, dict) and round_.get("stage") in ("principles", "response"):
            last[round_["stage"]] = round_
            unscored = unscored or (round_.get("critique") is not None and round_.get("score") is None)
            critiqued = critiqued or round_.get("critique") is not None or round_.get("score") is not None
    usage = {}
    for role, counts in (record.get("usage") or {}).items():
        if isinstance(counts, dict):
            tokens = (counts.get("prompt_tokens") or 0) + (counts.get("completion_tokens") or 0)
            usage[role] = [counts.get("calls") or 0, tokens]
    prompt = str(record.get("prompt") or "")
    error = record.get("error")
    return {
        "id": str(record["id"]),
        "mode": str(record.get("mode") or "unknown"),
        "status": str(record.get("status") or "unknown"),
        "prompt": prompt[:SNIPPET_CHARS],
        "principles_score": _score(last.get("principles")),
        "response_score": _score(last.get("response")),
        "principles_rounds": last["principles"].get("round") if "principles" in last else None,
        "response_rounds": last["response"].get("round") if "response" in last else None,
        "unscored": int(unscored),
        "critiqued": int(critiqued),  # a critic (or the base model as one) judged a version of it
        "failed": int(record.get("status") == "failed"),
        "error": str(error)[:ERROR_CHARS] if error is not None else None,
        "prompt_source": record.get("prompt_source"),
        "sft_split": record.get("sft_split"),
        "source_id": record.get("source_id"),
        "calls": sum(calls for calls, _ in usage.values()),
        "tokens": sum(tokens for _, tokens in usage.values()),
        "usage": usage,  # role -> [calls, tokens]
        "prompt_hash": prompt_hash(prompt),
        "full_prompt": prompt,
        "final_response": str(record.get("response") or ""),
    }


def _score(round_: dict | None) -> int | None:
    score = round_.get("score") if round_ else None
    return score if isinstance(score, int) else None


# -- the index -----------------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS files (
    file_no INTEGER PRIMARY KEY, path TEXT, size INTEGER, mtime_ns INTEGER, indexed_bytes INTEGER,
    tail_sha TEXT, torn_bytes INTEGER, lines INTEGER
);
CREATE TABLE IF NOT EXISTS records (
    rowid INTEGER PRIMARY KEY, id TEXT UNIQUE, mode TEXT, status TEXT, prompt TEXT,
    principles_score INTEGER, response_score INTEGER, principles_rounds INTEGER, response_rounds INTEGER,
    unscored INTEGER, critiqued INTEGER, failed INTEGER, error TEXT, prompt_source TEXT, sft_split TEXT,
    source_id TEXT,
    calls INTEGER, tokens INTEGER, prompt_hash TEXT, file_no INTEGER, offset INTEGER, length INTEGER
);
CREATE TABLE IF NOT EXISTS usage (rowid INTEGER, mode TEXT, role TEXT, calls INTEGER, tokens INTEGER);
-- covers the overview's histograms: it reads this narrow index, not the records' rows
CREATE INDEX IF NOT EXISTS records_summary ON records (
    mode, status, unscored, critiqued, failed, principles_rounds, principles_score, response_rounds, response_score
);
CREATE INDEX IF NOT EXISTS records_mode_status ON records (mode, status);
CREATE INDEX IF NOT EXISTS records_status ON records (status);
CREATE INDEX IF NOT EXISTS records_response_score ON records (response_score);
CREATE INDEX IF NOT EXISTS records_principles_score ON records (principles_score);
CREATE INDEX IF NOT EXISTS records_prompt_hash ON records (prompt_hash);
CREATE INDEX IF NOT EXISTS records_tokens ON records (tokens);
-- contentless: the texts stay in the records files; the index only finds rowids
CREATE VIRTUAL TABLE IF NOT EXISTS records_text USING fts5(
    prompt, response, content='', tokenize='unicode61 remove_diacritics 2'
);
CREATE TABLE IF NOT EXISTS decisions (id TEXT PRIMARY KEY, decision TEXT, line TEXT);
"""


class RecordIndex:
    """The index of some records files, kept up to date with them by `refresh()` (module docstring).

    One connection, used under a lock by the viewer's request threads: every query is a few
    milliseconds at 50,000 records, and one writer at a time is what SQLite allows anyway.
    """

    def __init__(self, files: Sequence[Path], index_file: Path | str, decisions_file: Path | None = None):
        self.files = [Path(f) for f in files]
        self.index_file = index_file
        self.decisions_file = decisions_file
        self.lock = threading.RLock()
        self.duplicates = 0  # records whose id an earlier record already had (the first is kept)
        self.version = 0  # counts the writes, so the overview is computed once per state of the index
        self._overview: tuple[int, dict] | None = None
        self._decisions_stat: tuple | None = None
        self.decisions = Decisions(decisions_file or Path(os.devnull), {})
        self.db = sqlite3.connect(str(index_file), check_same_thread=False, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            pass  # a file system without shared memory: the default journal works too
        self.db.execute("PRAGMA synchronous=OFF")  # a lost index is rebuilt from the records files
        self.db.executescript(_SCHEMA)
        self.refresh()

    def close(self) -> None:
        with self.lock:
            self.db.close()

    # -- keeping it current

    def refresh(self) -> None:
        """Bring the index up to date with the records files and the decisions file."""
        with self.lock:
            stored = {row["path"]: dict(row) for row in self.db.execute("SELECT * FROM files")}
            paths = [str(f.resolve()) for f in self.files]
            version = self.db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if version is None or version[0] != SCHEMA_VERSION or set(stored) != set(paths):
                self._rebuild(paths)
            else:
                appended = []
                for path in paths:
                    state = _grown(Path(path), stored[path])
                    if state == "rebuild":
                        self._rebuild(paths)
                        break
                    if state == "grown":
                        appended.append(stored[path])
                else:
                    for row in appended:
                        self._write(lambda row=row: self._index_file(row["file_no"], Path(row["path"]), row))
            self._sync_decisions()

    def _rebuild(self, paths: list[str]) -> None:
        def rebuild():
            self.db.execute("DELETE FROM files")
            self.db.execute("DELETE FROM records")
            self.db.execute("DELETE FROM usage")
            self.db.execute("INSERT INTO records_text(records_text) VALUES ('delete-all')")
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            self.duplicates = 0
            for file_no, path in enumerate(paths):
                self.db.execute("INSERT INTO files (file_no, path) VALUES (?, ?)", (file_no, path))
                self._index_file(file_no, Path(path), {"indexed_bytes": 0, "lines": 0})

        self._write(rebuild)

    def _write(self, work) -> None:
        self.version += 1  # what was computed from the index before is stale
        self.db.execute("BEGIN IMMEDIATE")
        try:
            work()
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _index_file(self, file_no: int, path: Path, state: dict) -> None:
        """Index the lines of `path` after byte `state["indexed_bytes"]`."""
        if not path.exists():
            self.db.execute("UPDATE files SET size=? WHERE file_no=?", (MISSING, file_no))
            return
        # Taken before reading: a line appended while this reads makes the next refresh look again.
        stat = path.stat()
        start, lines = state["indexed_bytes"], state["lines"]
        next_rowid = (self.db.execute("SELECT max(rowid) FROM records").fetchone()[0] or 0) + 1
        rows, texts = [], []
        end, torn = start, 0
        for line_number, offset, raw in _lines(path, start, lines):
            line = raw.rstrip(b"\n")
            try:
                record = json.loads(line)
                if not isinstance(record, dict) or not isinstance(record.get("id"), str):
                    raise ValueError("not a record")
            except (ValueError, UnicodeDecodeError):
                if offset + len(raw) >= max(stat.st_size, path.stat().st_size):
                    # the last line, torn by a kill (or still being written): counted, and read again once complete
                    torn = len(raw)
                    break
                raise UserError(f"{path}:{line_number}: not a valid record line; fix or remove it") from None
            row = record_row(record)
            row.update(file_no=file_no, offset=offset, length=len(line), rowid=next_rowid)
            rows.append(row)
            texts.append((next_rowid, row["full_prompt"], row["final_response"]))
            next_rowid += 1
            end, lines = offset + len(raw), line_number
            if len(rows) >= BATCH:
                self._insert(rows, texts)
                rows, texts = [], []
        self._insert(rows, texts)
        self.db.execute(
            "UPDATE files SET size=?, mtime_ns=?, indexed_bytes=?, tail_sha=?, torn_bytes=?, lines=? WHERE file_no=?",
            (stat.st_size, stat.st_mtime_ns, end, _tail_sha(path, end), torn, lines, file_no),
        )

    def _insert(self, rows: list[dict], texts: list[tuple]) -> None:
        if not rows:
            return
        columns = (
            "rowid", "id", "mode", "status", "prompt", "principles_score", "response_score", "principles_rounds",
            "response_rounds", "unscored", "critiqued", "failed", "error", "prompt_source", "sft_split", "source_id",
            "calls", "tokens", "prompt_hash", "file_no", "offset", "length",
        )  # fmt: skip
        sql = f"INSERT OR IGNORE INTO records ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
        before = self.db.total_changes
        self.db.executemany(sql, [tuple(row[c] for c in columns) for row in rows])
        inserted = self.db.total_changes - before
        if inserted < len(rows):  # duplicate ids: only the rows that went in get their text indexed
            self.duplicates += len(rows) - inserted
            kept = {r[0] for r in self.db.execute(
                f"SELECT rowid FROM records WHERE rowid IN ({','.join('?' * len(rows))})", [r["rowid"] for r in rows]
            )}  # fmt: skip
            texts = [t for t in texts if t[0] in kept]
            rows = [r for r in rows if r["rowid"] in kept]
        self.db.executemany("INSERT INTO records_text (rowid, prompt, response) VALUES (?, ?, ?)", texts)
        self.db.executemany(
            "INSERT INTO usage VALUES (?, ?, ?, ?, ?)",
            [(r["rowid"], r["mode"], role, *counts) for r in rows for role, counts in r["usage"].items()],
        )

    def _sync_decisions(self) -> None:
        """Mirror the decisions file into the `decisions` table when it changed (the list filters on it)."""
        if self.decisions_file is None:
            return
        try:
            stat = self.decisions_file.stat()
            key = (stat.st_size, stat.st_mtime_ns)
        except FileNotFoundError:
            key = None
        if key == self._decisions_stat:
            return
        decisions = read_decisions(self.decisions_file)

        def mirror():
            self.db.execute("DELETE FROM decisions")
            self.db.executemany(
                "INSERT INTO decisions VALUES (?, ?, ?)",
                [(id, line["decision"], json.dumps(line)) for id, line in decisions.items()],
            )

        self._write(mirror)
        self.decisions, self._decisions_stat = decisions, key

    # -- reading

    def torn_bytes(self) -> int:
        with self.lock:
            return self.db.execute("SELECT coalesce(sum(torn_bytes), 0) FROM files").fetchone()[0]

    def count(self) -> int:
        with self.lock:
            return self.db.execute("SELECT count(*) FROM records").fetchone()[0]

    def modes(self) -> list[str]:
        """The modes of the records in the order the run lists them: by the first file holding each (a pipeline's
        config.yaml `modes:` order, else the order of the PATHs given); modes of one file in `mode_rank` order."""
        with self.lock:
            first_file = self.db.execute("SELECT mode, min(file_no) FROM records GROUP BY mode").fetchall()
        return [mode for mode, _ in sorted(first_file, key=lambda row: (row[1], *mode_rank(row[0])))]

    def record(self, record_id: str) -> dict | None:
        """The full record of `record_id`, read from its file (None when no record has that id)."""
        with self.lock:
            row = self.db.execute(
                "SELECT r.offset, r.length, f.path FROM records r JOIN files f USING (file_no) WHERE r.id = ?",
                (record_id,),
            ).fetchone()
        return _read_record(row) if row else None

    def same_prompt(self, record: dict) -> list[dict]:
        """The records of other modes with the same prompt text: `[{"mode", "record"}]`, in the run's order of modes."""
        with self.lock:
            rows = self.db.execute(
                "SELECT r.mode, r.offset, r.length, f.path FROM records r JOIN files f USING (file_no) "
                "WHERE r.prompt_hash = ? AND r.mode != ? ORDER BY r.id",
                (prompt_hash(str(record.get("prompt") or "")), str(record.get("mode"))),
            ).fetchall()
        order = {mode: place for place, mode in enumerate(self.modes())}
        rows = sorted(rows, key=lambda row: order.get(row["mode"], len(order)))
        others = [{"mode": row["mode"], "record": _read_record(row)} for row in rows]
        return [o for o in others if o["record"].get("prompt") == record.get("prompt")]

    def rows(self, sql: str, parameters: Sequence = ()) -> list[sqlite3.Row]:
        with self.lock:
            return self.db.execute(sql, parameters).fetchall()

    def page(self, query: dict[str, str]) -> dict:
        """One page of the record list for the API's query parameters (see the contract's /api/records)."""
        where, parameters = _filters(query)
        stage = "principles" if query.get("score_stage") == "principles" else "response"
        sort = query.get("sort") or "id"
        order = query.get("order") or "asc"
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be asc or desc (got {order!r})")
        if sort == "score":
            order_by = f"r.{stage}_score IS NULL, r.{stage}_score {order}"  # records without a score last
        elif sort in SORT_COLUMNS:
            order_by = f"{SORT_COLUMNS[sort]} {order}"
        else:
            raise ValueError(f"sort must be one of id, score, rounds, tokens, mode, status (got {sort!r})")
        page, page_size = _positive(query, "page", 1), min(_positive(query, "page_size", 50), 500)
        joins = "FROM records r LEFT JOIN decisions d ON d.id = r.id"
        search = (query.get("q") or "").strip()
        if search:
            joins += " JOIN records_text t ON t.rowid = r.rowid"
            where.append("records_text MATCH ?")
        clause = (" WHERE " + " AND ".join(where)) if where else ""
        columns = ", ".join(f"r.{c}" for c in LIST_COLUMNS) + ", d.decision"
        listing = f"SELECT {columns} {joins}{clause} ORDER BY {order_by}, r.rowid {order} LIMIT ? OFFSET ?"
        counting = f"SELECT count(*) {joins}{clause}"
        attempts = [search, _phrase(search)] if search else [None]
        with self.lock:
            for attempt in attempts:
                bound = parameters + ([attempt] if attempt is not None else [])
                try:
                    total = self.db.execute(counting, bound).fetchone()[0]
                    items = self.db.execute(listing, bound + [page_size, (page - 1) * page_size]).fetchall()
                    break
                except sqlite3.OperationalError:
                    # FTS5 query syntax it cannot parse (a stray quote, `a:b`, ...): searched as a phrase instead
                    if attempt is None or attempt is attempts[-1]:
                        raise
        return {
            "total": total,
            "page": page,
            "page_size": page_size,
            "items": [
                {**dict(item), "unscored": bool(item["unscored"]), "failed": bool(item["failed"])} for item in items
            ],
        }

    def overview(self) -> dict:
        """Per mode: counts by status, shares, round and final-score histograms, calls and tokens per record."""
        with self.lock:
            if self._overview is not None and self._overview[0] == self.version:
                return self._overview[1]
            summary = self.db.execute(
                "SELECT mode, status, unscored, critiqued, failed, principles_rounds, principles_score, "
                "response_rounds, response_score, count(*) FROM records GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9"
            ).fetchall()
            order = self.modes()
            usage = self.db.execute(
                "SELECT mode, role, sum(calls), sum(tokens) FROM usage GROUP BY mode, role ORDER BY mode, role"
            ).fetchall()
        modes: dict[str, dict] = {}
        for mode, status, unscored, critiqued, failed, p_rounds, p_score, r_rounds, r_score, n in summary:
            m = modes.setdefault(mode, {
                "records": 0, "status": Counter(), "accepted": 0, "failed": 0, "unscored": 0, "critiqued": 0,
                "rounds": {"principles": Counter(), "response": Counter()},
                "final_score": {"principles": Counter(), "response": Counter()},
            })  # fmt: skip
            m["records"] += n
            m["status"][status] += n
            m["accepted"] += n * (status == "accepted")
            m["failed"] += n * failed
            m["unscored"] += n * unscored
            m["critiqued"] += n * critiqued
            for stage, rounds, score in (("principles", p_rounds, p_score), ("response", r_rounds, r_score)):
                if rounds is not None:  # the stage ran (a final score of None: its last round was unscored)
                    m["rounds"][stage][str(rounds)] += n
                    m["final_score"][stage][str(score)] += n
        overview = {}
        for mode in order:
            m, n = modes[mode], modes[mode]["records"]
            critic = bool(m["critiqued"]) or m["failed"] == n
            overview[mode] = {
                "records": n,
                "status": dict(m["status"]),
                "accepted_share": round(m["accepted"] / n, 4),
                "failed_share": round(m["failed"] / n, 4),
                # A mode that calls no critic (direct, oracle, ...) has no scores to lack: its unscored share is None,
                # not 0%. Its records say so (self-refine's critic is its base model, so MODE_ROLES cannot); only
                # failed records say nothing, and are taken to have had one.
                "critic": critic,
                "unscored_share": round(m["unscored"] / n, 4) if critic else None,
                "rounds": {stage: _by_number(c) for stage, c in m["rounds"].items()},
                "final_score": {stage: _by_number(c) for stage, c in m["final_score"].items()},
                "calls_per_record": {},
                "tokens_per_record": {},
            }
        for mode, role, calls, tokens in usage:
            overview[mode]["calls_per_record"][role] = round(calls / overview[mode]["records"], 3)
            overview[mode]["tokens_per_record"][role] = round(tokens / overview[mode]["records"], 1)
        with self.lock:
            self._overview = (self.version, overview)
        return overview


def _by_number(counts: Counter) -> dict[str, int]:
    """A histogram's counts in the order of their values (numbers, then "None")."""
    numbers = sorted((value for value in counts if value.isdigit()), key=int)
    return {value: counts[value] for value in numbers + [value for value in counts if not value.isdigit()]}


def _grown(path: Path, stored: dict) -> str:
    """ "same", "grown" (only lines appended since it was indexed) or "rebuild" (anything else)."""
    try:
        stat = path.stat()
    except FileNotFoundError:  # removed while viewing (e.g. a mode's generation redone): indexed as empty
        return "same" if stored["size"] == MISSING else "rebuild"
    if stored["size"] in (None, MISSING):
        return "rebuild"
    if (stat.st_size, stat.st_mtime_ns) == (stored["size"], stored["mtime_ns"]):
        return "same"
    if stat.st_size < stored["indexed_bytes"] or _tail_sha(path, stored["indexed_bytes"]) != stored["tail_sha"]:
        return "rebuild"
    return "grown" if stat.st_size > stored["indexed_bytes"] else "same"


def _tail_sha(path: Path, end: int) -> str:
    with path.open("rb") as handle:
        start = max(0, end - TAIL_CHECK_BYTES)
        handle.seek(start)
        return hashlib.sha256(handle.read(end - start)).hexdigest()


def _lines(path: Path, start: int, lines_before: int) -> Iterator[tuple[int, int, bytes]]:
    """(line number, byte offset, the line with its newline, if it has one) of each non-blank line from `start`."""
    with path.open("rb") as handle:
        handle.seek(start)
        offset, number = start, lines_before
        for raw in handle:
            number += 1
            if raw.strip():
                yield number, offset, raw
            offset += len(raw)


def _read_record(row) -> dict:
    with open(row["path"], "rb") as handle:
        handle.seek(row["offset"])
        return json.loads(handle.read(row["length"]))


def _filters(query: dict[str, str]) -> tuple[list[str], list]:
    where, parameters = [], []
    for name in ("mode", "status", "prompt_source", "sft_split"):
        value = query.get("source" if name == "prompt_source" else "split" if name == "sft_split" else name)
        if value:
            where.append(f"r.{name} = ?")
            parameters.append(value)
    stage = query.get("score_stage") or "response"
    if stage not in ("response", "principles"):
        raise ValueError(f"score_stage must be response or principles (got {stage!r})")
    for bound, operator in (("min_score", ">="), ("max_score", "<=")):
        if query.get(bound) not in (None, ""):
            try:
                value = int(query[bound])
            except ValueError:
                raise ValueError(f"{bound} must be a whole number (got {query[bound]!r})") from None
            where.append(f"r.{stage}_score {operator} ?")
            parameters.append(value)
    for flag in ("unscored", "failed"):
        if query.get(flag) in ("1", "true"):
            where.append(f"r.{flag} = 1")
        elif query.get(flag) in ("0", "false"):
            where.append(f"r.{flag} = 0")
    decision = query.get("decision")
    if decision in ("exclude", "keep"):
        where.append("d.decision = ?")
        parameters.append(decision)
    elif decision == "none":
        where.append("d.decision IS NULL")
    elif decision:
        raise ValueError(f"decision must be exclude, keep or none (got {decision!r})")
    return where, parameters


def _positive(query: dict[str, str], name: str, default: int) -> int:
    try:
        value = int(query.get(name) or default)
    except ValueError:
        raise ValueError(f"{name} must be a whole number (got {query[name]!r})") from None
    if value < 1:
        raise ValueError(f"{name} must be 1 or more (got {value})")
    return value


def _phrase(text: str) -> str:
    """`text` as one FTS5 phrase: the query for a search FTS5's syntax cannot parse."""
    return '"' + text.replace('"', '""') + '"'
