"""Evaluation of any UNIP segmentation checkpoint on a data set split (Zhang et al., "UNIP", ICLR 2025).

A thin entry point over `unip_hf.evaluation.evaluator.run_evaluation`: prints a metrics table (mIoU and per-class IoU for
semantic sets; IoU, nIoU, Pd, Fa for small-target sets) and writes `eval_results.json` and `.eval_results/*.yaml`
(the Hub's result files); `--push_to_hub --hub_model_id user/name` pushes the model with an updated card.

    python recipes/eval_segmentation.py --model_name_or_path outputs/unip-tiny-sirst --dataset sirst \
        --data_dir ../shared/data/sirst --split test
    accelerate launch recipes/eval_segmentation.py --model_name_or_path CKPT --dataset soda --data_dir data/SODA \
        --eval_mode slide --crop_size 512

Run `python recipes/eval_segmentation.py --help` for every argument.
"""

import sys

from unip_hf.evaluation.evaluator import evaluate_main

if __name__ == "__main__":
    sys.exit(evaluate_main())
