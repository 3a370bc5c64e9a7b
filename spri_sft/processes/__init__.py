"""Processes and the directories they write: one writer per output directory, children bound to us.

* `hold_output_dir` / `writes_output_dir` (`output_lock`): a command that writes an output directory
  holds an advisory lock on it for as long as it runs, so a second command into the same directory
  refuses in one line naming the first, instead of both appending to the same files.
* `spawn_bound` / `run_bound` (`children`): a child process (a managed vLLM server, the pipeline's
  training job) that leads its own process group and dies with this process, even a SIGKILLed one.
"""

from spri_sft.processes.children import run_bound, signal_group, spawn_bound, stop_bound
from spri_sft.processes.output_lock import LOCK_NAME, hold_output_dir, writes_output_dir

__all__ = [
    "LOCK_NAME",
    "hold_output_dir",
    "run_bound",
    "signal_group",
    "spawn_bound",
    "stop_bound",
    "writes_output_dir",
]
