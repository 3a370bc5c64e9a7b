"""The test helpers: fake OpenAI-compatible servers, a fake vLLM, the tiny model and the model-family fixtures.

Only the tests, the benchmarks and the GPU check use them, so they live outside the wheel, imported as `support`
with tests/ on the import path: pytest puts it first on sys.path (tests/conftest.py has no package above it),
scripts/ insert it themselves, and the child processes they start (`python -m support.fake_vllm_server`) find it
on the PYTHONPATH that `put_tests_on_pythonpath` sets.
"""

from __future__ import annotations

import os
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]


def put_tests_on_pythonpath() -> None:
    """Put tests/ first on PYTHONPATH, so every child process started from now on can import `support` too."""
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if str(TESTS_DIR) not in entries:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS_DIR), *entries]))
