"""Fine-tuning or linear probing of a UNIP segmentation model (Zhang et al., "UNIP", ICLR 2025) under `accelerate`.

A thin entry point: arguments are parsed into dataclasses (`HfArgumentParser`) and passed to
`unip_hf.training.finetuning.run_finetuning`, which holds the logic (and is what the tests cover).

    accelerate launch recipes/finetune.py --model_name_or_path unip-small-infmix --dataset soda \
        --data_dir data/SODA --crop_size 512 --max_steps 40000 --eval_steps 4000 --eval_mode slide \
        --output_dir unip-small-soda
    python recipes/finetune.py --model_name_or_path none --preset unip-tiny --dataset sirst \
        --data_dir ../shared/data/sirst --mode linear_probe ...

Run `python recipes/finetune.py --help` for every argument (or pass one JSON/YAML file of arguments).
"""

import sys

from unip_hf.training.finetuning import finetune_main

if __name__ == "__main__":
    sys.exit(finetune_main())
