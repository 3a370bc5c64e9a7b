"""Entry script for `accelerate launch`: the same job as `spri-sft grpo` (see spri_sft/train/grpo.py).

    accelerate launch --config_file recipes/accelerate/single_gpu.yaml scripts/grpo.py \
        --config recipes/llama-3.1-8b-instruct/grpo/lora.yaml

A `vllm` critic is started once, by the main process, and every process asks that one server (docs/train.md, GRPO).
"""

import sys

from spri_sft.cli import main

if __name__ == "__main__":
    sys.exit(main(["grpo", *sys.argv[1:]]))
