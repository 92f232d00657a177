"""Training machinery: the accelerate loop, optimisation, checkpoints, recipe arguments, fine-tuning."""
