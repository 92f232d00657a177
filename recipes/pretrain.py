"""NMI-HAD pre-training of a UNIP student (Zhang et al., "UNIP", ICLR 2025) under `accelerate launch`.

A thin entry point: arguments are parsed into dataclasses (`HfArgumentParser`) and passed to
`unip_hf.pretraining.nmi_had.run_pretraining`, which holds the logic (and is what the tests cover).

    accelerate launch recipes/pretrain.py --teacher_name_or_path facebook/vit-mae-large --teacher_layer 17 \
        --student_preset unip-small --train_data path/to/infmix --output_dir unip-small-infmix

Run `python recipes/pretrain.py --help` for every argument.
"""

import sys

from unip_hf.pretraining.nmi_had import main

if __name__ == "__main__":
    sys.exit(main())
