"""Every use of Weights & Biases in spri-sft: when it is on, offline without a key, runs, summaries, tables, artifacts.

The rest of the package never imports `wandb`; it says what to record in plain Python values
(dicts, lists, paths) and this module turns them into W&B calls:

- `reports_to_wandb(report_to)`: whether a `report_to` setting (TrainingArguments' shape) includes W&B;
- `use_offline_without_key(report_to)`: W&B logs offline, into a local `wandb/` that `wandb sync`
  uploads later, when no API key, no WANDB_MODE and no ~/.netrc login is found;
- `environment(root)`: a pipeline's settings for itself and its children (WANDB_DIR, offline,
  W&B's own banners silenced, since the pipeline prints the one sync command at its end), undone after;
- `run(...)`: a run of a group (the pipeline's), started here (the one `wandb.init` of the package)
  or, with `join_open`, the run already open in this process (the trainer's W&B callback's);
- `active_run()`: that open run, if any; `finish_active_run()` closes it;
- `Run`: what may be recorded on a run: `summarize`, `log` (tables, bar charts, images: one
  step), `log_artifact` (files, each under its name in the artifact);
- `sync_hint()`: where the runs are, and the `wandb sync` command when they are offline.

`wandb` is imported only when a run is made or looked up, so a run with W&B off never imports it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_PROJECT = "spri-sft"

# The variables `environment` may set; they are restored (or removed) when it ends.
_ENVIRONMENT = ("WANDB_DIR", "WANDB_MODE", "WANDB_SILENT")


def reports_to_wandb(report_to: str | list[str] | None) -> bool:
    """Whether a `report_to` setting (one name or a list, as TrainingArguments takes it) includes W&B."""
    wanted = report_to if isinstance(report_to, list) else [report_to]
    return "wandb" in wanted or "all" in wanted


def has_login() -> bool:
    """An API key, an explicit WANDB_MODE, or a W&B login in ~/.netrc: then W&B is left as it is configured."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE"):
        return True
    netrc = Path.home() / ".netrc"
    return netrc.exists() and "api.wandb.ai" in netrc.read_text()


def use_offline_without_key(report_to: str | list[str] | None = "wandb") -> None:
    """W&B runs offline (a local wandb/ dir that `wandb sync` uploads later) when it is used and no login is found."""
    if not reports_to_wandb(report_to) or has_login():
        return
    os.environ["WANDB_MODE"] = "offline"
    logger.info("no W&B API key: logging offline (upload later with `wandb sync wandb/offline-run-*`)")


@contextlib.contextmanager
def environment(root: Path) -> Iterator[None]:
    """W&B settings for a pipeline and the children it starts: runs under <root>/wandb unless WANDB_DIR says
    otherwise, offline without a key, W&B's per-run banners off. The variables are as before afterwards."""
    saved = {key: os.environ.get(key) for key in _ENVIRONMENT}
    try:
        os.environ.setdefault("WANDB_DIR", str(Path(root).resolve()))
        os.environ.setdefault("WANDB_SILENT", "true")  # five runs' banners would bury the output; sync_hint() sums up
        use_offline_without_key("wandb")
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def group_environment(project: str | None, group: str) -> dict[str, str]:
    """The variables that put the runs of a child process (`spri-sft train`: the trainer's W&B callback) into
    the pipeline's project and group."""
    return {"WANDB_PROJECT": project or DEFAULT_PROJECT, "WANDB_RUN_GROUP": group}


def runs_directory(fallback: Path | None = None) -> Path:
    """Where W&B writes its runs: `$WANDB_DIR/wandb`, else `<fallback or the working directory>/wandb`."""
    base = os.environ.get("WANDB_DIR") or (str(fallback) if fallback is not None else os.getcwd())
    return Path(base) / "wandb"


def is_offline() -> bool:
    return os.environ.get("WANDB_MODE") in ("offline", "dryrun")


def sync_hint(fallback: Path | None = None) -> str:
    """One line: the W&B directory, and the command that uploads its runs when they were logged offline."""
    directory = runs_directory(fallback)
    if is_offline():
        return f"W&B runs (offline): {directory}; upload them with `wandb sync {directory}/offline-run-*`"
    return f"W&B runs: {directory}"


class Run:
    """A W&B run, as much of it as spri-sft records: summary values, one-step logs, artifacts."""

    def __init__(self, run: Any):
        self._run = run

    @property
    def id(self) -> str:
        return self._run.id

    def summarize(self, values: Mapping[str, Any]) -> None:
        """Values shown on the run's overview (and compared across a group's runs)."""
        self._run.summary.update(dict(values))

    def log(
        self,
        *,
        tables: Mapping[str, tuple[list[str], list[list[Any]]]] | None = None,
        bar_charts: Mapping[str, tuple[Mapping[Any, Any], str, str, str]] | None = None,
        images: Mapping[str, tuple[Path, str]] | None = None,
        pages: Mapping[str, Path] | None = None,
    ) -> None:
        """One history step: tables (`key: (columns, rows)`), bar charts (`key: (counts, x label, y label,
        title)`, one bar per key of `counts`), images (`key: (PNG file, caption)`) and self-contained HTML pages
        (`key: .html file`, shown as they are: W&B's stylesheet is not injected)."""
        import wandb

        logged: dict[str, Any] = {}
        for key, (columns, rows) in (tables or {}).items():
            logged[key] = wandb.Table(columns=list(columns), data=[list(row) for row in rows])
        for key, (counts, x, y, title) in (bar_charts or {}).items():
            table = wandb.Table(columns=[x, y], data=[[k, v] for k, v in counts.items()])
            logged[key] = wandb.plot.bar(table, x, y, title=title)
        for key, (path, caption) in (images or {}).items():
            logged[key] = wandb.Image(str(path), caption=caption)
        for key, path in (pages or {}).items():
            logged[key] = wandb.Html(str(path), inject=False)
        if logged:
            self._run.log(logged)

    def log_artifact(
        self, name: str, kind: str, files: Mapping[str, Path], metadata: Mapping[str, Any] | None = None
    ) -> None:
        """An artifact of type `kind` holding `files` (the name inside the artifact → the file)."""
        import wandb

        artifact = wandb.Artifact(name, type=kind, metadata=dict(metadata or {}))
        for inside, path in files.items():
            artifact.add_file(str(path), name=inside)
        self._run.log_artifact(artifact)


def active_run() -> Run | None:
    """The run open in this process (the trainer's W&B callback opens one at train start), or None.

    Looks only when `wandb` was imported already: nothing that opens a run has run otherwise.
    """
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return None
    return Run(wandb.run)


def finish_active_run() -> None:
    """Close the open run (the trainer's W&B callback leaves its run open; a later run must not reuse it)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


@contextlib.contextmanager
def run(
    *,
    project: str | None,
    group: str | None,
    name: str | None,
    job_type: str,
    config: Mapping[str, Any] | None = None,
    fallback_dir: Path | None = None,
    join_open: bool = False,
) -> Iterator[Run]:
    """A run of `group`, finished when the block ends; with `join_open`, the run already open in this process
    (left open) if there is one. Offline without a key. It is written under $WANDB_DIR (the pipeline sets
    it), else under `fallback_dir` when given, else the working directory."""
    if join_open:
        joined = active_run()
        if joined is not None:
            yield joined
            return
    use_offline_without_key("wandb")
    import wandb

    started = wandb.init(
        project=project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        group=group or os.environ.get("WANDB_RUN_GROUP"),
        name=name,
        job_type=job_type,
        config=dict(config) if config is not None else None,
        dir=None if os.environ.get("WANDB_DIR") or fallback_dir is None else str(fallback_dir),
        reinit="create_new",
    )
    try:
        yield Run(started)
    finally:
        started.finish()
