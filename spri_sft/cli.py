"""`spri-sft`: parses the command line and dispatches to a job; holds no job logic itself."""

from __future__ import annotations

import logging
import sys

from spri_sft.errors import UserError

USAGE = """usage: spri-sft COMMAND [--config FILE.yaml] [--section.field VALUE ...]

Commands:
  generate   Write SPRI (or baseline) SFT records for a set of prompts.

Every command reads its settings from an optional YAML file (--config) and then from
--dotted.name VALUE overrides of any field. `spri-sft COMMAND --help` lists every field.
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    # Our own progress notes at INFO; libraries (httpx logs every request at INFO) only warn.
    logging.basicConfig(level=logging.WARNING, format="[spri-sft] %(message)s")
    logging.getLogger("spri_sft").setLevel(logging.INFO)
    try:
        if command == "generate":
            return _generate(rest)
        raise UserError(f"unknown command {command!r} (try: spri-sft --help)")
    except UserError as err:
        print(f"spri-sft: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spri-sft: interrupted; finished records are kept, rerun the same command to resume", file=sys.stderr)
        return 130


def _generate(argv: list[str]) -> int:
    from spri_sft.config import format_help, load_config
    from spri_sft.generate.config import GenerateConfig

    if "-h" in argv or "--help" in argv:
        print("usage: spri-sft generate [--config FILE.yaml] [--section.field VALUE ...]\n")
        print((GenerateConfig.__doc__ or "").strip() + "\n\nFields:")
        print(format_help(GenerateConfig))
        return 0
    config = load_config(GenerateConfig, argv)

    from spri_sft.generate.run import generate

    summary = generate(config)
    print(
        f"[spri-sft] {summary['records']} records in {config.output_dir}/records.jsonl: "
        + ", ".join(f"{n} {status}" for status, n in sorted(summary["status"].items()))
        + f" ({summary['wall_seconds']:.0f} s)"
    )
    return 0 if not summary["missing"] or summary["stopped_by_budget"] else 1


if __name__ == "__main__":
    sys.exit(main())
