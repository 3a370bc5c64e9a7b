"""A run's training recipes checked by TRL and transformers themselves before the run pays for generation.

TRL's SFTConfig and DPOConfig (transformers' `TrainingArguments`) refuse settings that disagree when they
are built: `load_best_model_at_end` with `save_steps` not a multiple of `eval_steps`, `bf16` without a GPU
that has it, a `logging_steps` of 0, ... A recipe the pipeline only name-checked met those refusals when its
training child started, after generation. Building them in the pipeline's own process is not an option:
`TrainingArguments.__post_init__` reads `self.device`, which creates accelerate's `PartialState` (and sets
the CUDA device on a GPU machine) that the training child needs to set up itself. So one short child
process parses every recipe of the run exactly as `spri-sft train` / `dpo` / `grpo` will (`run_job`: the
recipe's own checks, `TrlParser`, the CPU flags without a GPU) and exits before any model or data is
loaded: 5-12 s on two busy cores (importing TRL), run beside the pipeline's other checks, once per run (and once
per distinct recipe in one process, e.g. a test session).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from spri_sft.errors import UserError
from spri_sft.processes import spawn_bound, stop_bound

# Fields the pipeline sets per run and per mode: where things are, not how training runs; left out of what
# is remembered as checked, so a rerun or another output directory with the same recipe is not parsed again.
PLACES = ("output_dir", "dataset_path", "run_name", "sft_adapter")

CHECK_STOP_GRACE_S = 1.0  # it writes nothing: a stopped check need not finish anything

_checked: set[str] = set()  # recipes (less their PLACES) this process saw parsed cleanly


@contextlib.contextmanager
def training_recipes_checked(recipes: list[tuple[str, dict[str, Any], str]]) -> Iterator[None]:
    """Parse each `(job, args, where)` (job: train, dpo or grpo; `where` names the recipe to the user) as its training
    child will, in a child process that runs while the block does (the pipeline's other checks); leaving the
    block waits for it. The first refusal is one UserError line: `where` and the setting TRL or transformers names."""
    unchecked = list({_key(recipe): recipe for recipe in recipes if _key(recipe) not in _checked}.values())
    if not unchecked:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="spri-sft-recipes-") as folder:
        command = [sys.executable, "-m", "spri_sft.pipeline.recipe_check"]
        for index, (job, args, _) in enumerate(unchecked):
            path = Path(folder) / f"{index}-{job}.yaml"
            path.write_text(yaml.safe_dump(args, sort_keys=False))
            command += [job, str(path)]
        stdout, stderr = Path(folder) / "stdout", Path(folder) / "stderr"  # files: no pipe to fill while it waits
        with stdout.open("w") as out, stderr.open("w") as err:
            child = spawn_bound(command, CHECK_STOP_GRACE_S, stdout=out, stderr=err)  # dies with the pipeline
        try:
            yield
            returncode = child.wait()
        except BaseException:
            stop_bound(child, CHECK_STOP_GRACE_S)
            raise
        finally:
            child.stdin.close()
        verdict, last_words = (
            _verdict(stdout.read_text()),
            (stderr.read_text().strip().splitlines() or ["no output"])[-1],
        )
    if returncode == 0:
        _checked.update(_key(recipe) for recipe in unchecked)
        return
    if verdict is None:  # the child itself failed (an import, a crash): its last words say why
        raise UserError(f"checking the training recipes failed (exit status {returncode}): {last_words}")
    where = unchecked[verdict["index"]][2]
    raise UserError(f"{where}: {' '.join(verdict['error'].split())}")


def _key(recipe: tuple[str, dict[str, Any], str]) -> str:
    job, args, _ = recipe
    settings = {key: value for key, value in args.items() if key not in PLACES}
    return hashlib.sha256(json.dumps([job, settings], sort_keys=True, default=str).encode()).hexdigest()


def _verdict(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            found = json.loads(line)
            if isinstance(found, dict) and "error" in found:
                return found
    return None


def main(argv: list[str]) -> int:
    """`python -m spri_sft.pipeline.recipe_check JOB RECIPE [JOB RECIPE ...]`: exit 0 when every recipe parses,
    else print `{"index": i, "error": "..."}` for the first that does not and exit 2."""
    from spri_sft.train import job_module
    from spri_sft.train.job import run_job

    for index, (job, path) in enumerate(zip(argv[::2], argv[1::2], strict=True)):
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the child's notes (no GPU: the CPU) are not ours
                module = job_module(job)
                check_given = getattr(module, "check_given", None)  # a job's own checks of what the recipe sets
                run_job(
                    ["--config", path], f"spri-sft {job}", module.make_parser, main=lambda *parsed, **given: None,
                    check_given=check_given,
                )  # fmt: skip
        except UserError as err:
            message = str(err).removeprefix(f"{path}: ")
        except Exception as err:  # noqa: BLE001 - any other refusal of a config's own checks, named by its type
            message = f"{type(err).__name__}: {err}"
        else:
            continue
        print(json.dumps({"index": index, "error": message}), flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
