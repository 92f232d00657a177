"""Training machinery: the accelerate loop, optimisation, sampling, NaN guard, checkpoints and run state, fine-tuning, TMT and small-target distillation."""
