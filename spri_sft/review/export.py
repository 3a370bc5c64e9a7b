"""`spri-sft view PATH --export FILE.html [--sample N]`: one self-contained HTML file of a sample of records.

The file is the viewer's own page with its stylesheet and script inlined and the data embedded as JSON
in `<script type="application/json" id="spri-data">` (`{"overview", "records", "decisions", "sample"}`):
it opens from disk or as an e-mail attachment or W&B artifact, with no server and nothing fetched, and
the page answers its views from that JSON (read-only). The overview is the whole run's; the records
are a sample stratified by (mode, status), so a rare status (failed, max_rounds) is shown at all. The
sample is the same for the same records and seed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from spri_sft.errors import UserError
from spri_sft.review.index import open_index, run_root, shown_paths
from spri_sft.review.server import STATIC_DIR, fill_meta

DEFAULT_SAMPLE = 200


def export_html(
    paths: str | Path | Sequence[str | Path], out_file: str | Path, sample: int = DEFAULT_SAMPLE, seed: int = 0
) -> Path:
    """Write the export of PATHs' records (a pipeline output dir, a generate output dir or records files) to
    `out_file`; returns its path. `sample` records at most, stratified by mode and status."""
    if sample < 1:
        raise UserError(f"view: --sample must be 1 or more (got {sample})")
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    page = _page_without_data()
    index = open_index(paths)
    try:
        rows = index.rows("SELECT id, mode, status FROM records")
        chosen = stratified_sample([(r["id"], r["mode"], r["status"]) for r in rows], sample, seed)
        records = [index.record(record_id) for record_id in chosen]
        decisions = index.decisions
        overview = {
            "path": shown_paths(paths),
            "files": [str(file) for file in index.files],
            "read_only": True,
            "modes": index.overview(),
            "decisions": {decision: decisions.count(decision) for decision in ("exclude", "keep")},
            "figures": [],  # the report's PNGs stay beside the run; the overview's charts are drawn from the data
            "run": str(run_root(paths) or ""),
        }
        data = {
            "overview": overview,
            "records": records,
            "decisions": {record_id: decisions[record_id] for record_id in chosen if record_id in decisions},
            "sample": {"records": len(records), "of": len(rows), "seed": seed},
        }
    finally:
        index.close()
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    staging = out_file.with_name(out_file.name + ".tmp")
    staging.write_text(page.replace(_DATA_SLOT, _data_script(data), 1), encoding="utf-8")
    os.replace(staging, out_file)
    return out_file


def stratified_sample(rows: Sequence[tuple[str, str, str]], size: int, seed: int = 0) -> list[str]:
    """The ids of `size` of `rows` (id, mode, status): each (mode, status) stratum gets its proportional share
    (largest remainders), and at least one record while there are no more strata than `size`; within a stratum
    the order is a hash of seed and id, so a sample does not depend on the order of the files."""
    strata: dict[tuple[str, str], list[str]] = {}
    for record_id, mode, status in rows:
        strata.setdefault((mode, status), []).append(record_id)
    if size >= len(rows):
        return [record_id for key in sorted(strata) for record_id in sorted(strata[key], key=_order(seed))]
    quotas = {key: size * len(ids) / len(rows) for key, ids in strata.items()}
    counts = {key: int(quota) for key, quota in quotas.items()}
    if size >= len(strata):
        counts = {key: max(1, n) for key, n in counts.items()}
    left = size - sum(counts.values())
    by_remainder = sorted(strata, key=lambda key: (-(quotas[key] - int(quotas[key])), key))
    for key in by_remainder:
        if left <= 0:
            break
        if counts[key] < len(strata[key]):
            counts[key] += 1
            left -= 1
    if left < 0:  # the minimum of one per stratum overshot: take back from the largest strata
        for key in sorted(strata, key=lambda key: (-counts[key], key)):
            while left < 0 and counts[key] > 1:
                counts[key] -= 1
                left += 1
    return [record_id for key in sorted(strata) for record_id in sorted(strata[key], key=_order(seed))[: counts[key]]]


def _order(seed: int):
    return lambda record_id: hashlib.sha256(f"{seed}:{record_id}".encode()).hexdigest()


_DATA_SLOT = "<!-- spri-data -->"


def _page_without_data() -> str:
    """index.html with app.css and app.js inlined, read-only, and a slot for the data before the script."""
    assets = {}
    for name in ("index.html", "app.css", "app.js"):
        try:
            assets[name] = (STATIC_DIR / name).read_text(encoding="utf-8")
        except OSError:
            missing = STATIC_DIR / name
            raise UserError(
                f"view: the viewer's {missing} is missing (a broken install?): reinstall spri-sft"
            ) from None  # noqa: E501
    for name, closing in (("app.css", "</style"), ("app.js", "</script")):
        if closing in assets[name].lower():  # it would end its inline element early
            raise UserError(f"view: {STATIC_DIR / name} contains {closing}>, which cannot be inlined")
    page = fill_meta(assets["index.html"], {"spri-token": "", "spri-read-only": "true"})
    page, styles = re.subn(
        r'<link[^>]*href="(?:\./)?static/app\.css"[^>]*>',
        lambda _: "<style>\n" + assets["app.css"] + "\n</style>",
        page,
    )
    page, scripts = re.subn(
        r'<script[^>]*src="(?:\./)?static/app\.js"[^>]*>\s*</script>',
        lambda _: _DATA_SLOT + "\n<script>\n" + assets["app.js"] + "\n</script>",
        page,
    )
    if styles != 1 or scripts != 1:
        raise UserError(f"view: {STATIC_DIR / 'index.html'} must link static/app.css and static/app.js once each")
    return page


def _data_script(data: dict) -> str:
    # `<` escaped, so no text in a record (`</script>`, `<!--`) can end or change the element.
    text = json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="spri-data">{text}</script>'
