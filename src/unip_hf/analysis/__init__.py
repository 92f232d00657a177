"""Attention-pattern analysis: NMI, attention distance and entropy per layer, patterns and plots."""
