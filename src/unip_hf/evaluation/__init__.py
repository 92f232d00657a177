"""Evaluation: the evaluator, whole-image / sliding-window inference and the metric modules."""
