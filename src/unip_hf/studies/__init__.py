"""Studies: the demo, the benchmark, the ablation, the layer-wise probe and their statistics."""
