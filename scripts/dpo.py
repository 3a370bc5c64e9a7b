"""Entry script for `accelerate launch`: the same job as `spri-sft dpo` (see spri_sft/train/dpo.py).

    accelerate launch --config_file recipes/accelerate/ddp.yaml scripts/dpo.py \
        --config recipes/smollm2-135m-instruct/dpo/lora.yaml
"""

import sys

from spri_sft.cli import main

if __name__ == "__main__":
    sys.exit(main(["dpo", *sys.argv[1:]]))
