"""NMI-HAD pre-training of a UNIP student (Zhang et al., "UNIP", ICLR 2025) under `accelerate launch`.

A thin entry point: arguments are parsed into dataclasses (`HfArgumentParser`) and passed to
`unip_hf.pretraining.run_pretraining`, which holds the logic (and is what the tests cover).

    accelerate launch recipes/pretrain.py --teacher_name_or_path facebook/vit-mae-large --teacher_layer 17 \
        --student_preset unip-small --train_data path/to/infmix --output_dir unip-small-infmix

Run `python recipes/pretrain.py --help` for every argument.
"""

import os
import sys

# This folder holds `evaluate.py`, which would shadow the `evaluate` library once the script's folder is first on
# sys.path, as `python recipes/X.py` and `accelerate launch recipes/X.py` put it.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

from unip_hf.pretraining import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
