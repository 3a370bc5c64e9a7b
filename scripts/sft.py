"""Entry script for `accelerate launch`: the same job as `spri-sft train` (see spri_sft/train/sft.py).

    accelerate launch --config_file recipes/accelerate/ddp.yaml scripts/sft.py \
        --config recipes/smollm2-135m-instruct/sft/lora.yaml
"""

import sys

from spri_sft.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
