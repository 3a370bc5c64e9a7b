"""Fine-tune on a formatted SPRI dataset with TRL's trainers and PEFT LoRA/QLoRA: SFT, DPO and GRPO, each a
`spri-sft` command built on `job.py`."""

import importlib

# The training commands, `spri-sft <command>`, by the module that builds each (make_parser, main, cli).
JOB_MODULES = {"train": "sft", "dpo": "dpo", "grpo": "grpo"}


def job_module(command: str):
    """The module of training command `command` (imported on first use: each pulls in TRL)."""
    return importlib.import_module(f"spri_sft.train.{JOB_MODULES[command]}")
