#!/usr/bin/env bash
# Issue 23: the SIRST small-target model trained to stay quiet on clutter, 3 seeds,
# each within the 2-core CPU budget (<= 30 min of training per seed, alone on the machine), against the README's
# command (the "before" arm), evaluated on SIRST test at the operating point chosen on val, plus the label-free
# false-alarm density on target-free frames (benchmarks/small_target_negative_frames.tsv: the frames marked "ok" there
# were checked by eye; training negatives must be other checked frames, see TRAIN_NEGATIVES below).
#
# Usage: bash recipes/small_target_experiment.sh [STEPS] [SEEDS...]      (defaults: 2500 steps, seeds 0 1 2)
# Pilot: ARMS=after EVAL_STEPS=30 bash recipes/small_target_experiment.sh 30 0   (every option end to end)
# TRAIN_NEGATIVES=1 links the checked frames of benchmarks/small_target_training_negatives.tsv into NEG_DIR (the
# "after" arm then trains with --negative_data NEG_DIR); without it NEG_DIR is used only if you filled it.
set -euo pipefail
STEPS=${1:-2500}; shift || true
SEEDS=${*:-0 1 2}
DATA=../shared/data
OUT=${OUT:-runs/issue23}
NEG_DIR=${NEG_DIR:-$OUT/negative_frames}
EVAL_STEPS=${EVAL_STEPS:-$(( STEPS / 10 > 0 ? STEPS / 10 : 1 ))}
mkdir -p "$OUT" "$NEG_DIR"
if [ "${TRAIN_NEGATIVES:-0}" = 1 ]; then
  grep -v '^#' benchmarks/small_target_training_negatives.tsv | awk -F'\t' '$3 == "ok" {print $1}' | while read -r FRAME; do
    ln -sf "$(realpath "$DATA/$FRAME")" "$NEG_DIR/$(echo "$FRAME" | tr / _)"
  done
fi
# the target-free training frames: the manifest's frames marked "ok", linked into one folder; keep them apart from the
# frames the false-alarm density is measured on (the manifest's "ok" frames are used for measurement here, so pass a
# different folder of checked frames as NEG_DIR to train on negatives without measuring on training frames)
COMMON=(--model_name_or_path none --preset unip-tiny --patch_size 16
  --config_overrides '{"num_hidden_layers": 4, "detail_channels": [8, 16, 32]}' --drop_path_rate 0.0
  --dataset sirst --data_dir $DATA/sirst --train_split train --eval_split val
  --crop_size 128 --img_scale 320x256 --ratio_min 0.75 --ratio_max 1.25 --per_device_train_batch_size 8
  --learning_rate 1e-3 --layer_decay 1.0 --lr_scheduler_type cosine --warmup_ratio 0.05
  --max_steps "$STEPS" --eval_steps "$EVAL_STEPS" --checkpointing_steps "$EVAL_STEPS")
NEW=(--full_frame_ratio 0.3 --full_frame_scale_min 0.5 --full_frame_scale_max 2.0
  --hard_negative_ratio 0.25 --hard_negative_pool 512 --target_fa 100)
if compgen -G "$NEG_DIR/*" > /dev/null; then NEW+=(--negative_data "$NEG_DIR"); fi
for SEED in $SEEDS; do
  for ARM in ${ARMS:-before after}; do
    RUN=$OUT/$ARM-seed$SEED
    EXTRA=(); [ "$ARM" = after ] && EXTRA=("${NEW[@]}")
    /usr/bin/time -v python recipes/finetune.py "${COMMON[@]}" "${EXTRA[@]}" --seed "$SEED" --output_dir "$RUN" \
      2> "$RUN.time.log" | tee "$RUN.log"
    THRESHOLD=$(python -c "import json; print(json.load(open('$RUN/config.json')).get('target_threshold', 0.5))")
    python recipes/eval_segmentation.py --model_name_or_path "$RUN" --dataset sirst --data_dir $DATA/sirst \
      --split test --img_scale none --irstd_threshold "$THRESHOLD" --output_dir "$RUN-test" | tee "$RUN-test.log"
    python benchmarks/small_target_false_alarms.py --model "$RUN" --data_root $DATA \
      ${INCLUDE_UNCHECKED:+--include_unchecked} --output "$RUN-false-alarms.json" | tee "$RUN-false-alarms.log"
  done
done
echo "per-seed test metrics: $OUT/*-test/eval_results.json; false-alarm density: $OUT/*-false-alarms.json"
