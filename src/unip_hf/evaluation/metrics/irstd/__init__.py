"""UNIP IRSTD `evaluate` module (load it by path: `unip_hf.evaluation.metrics.load_metric("irstd")`)."""
