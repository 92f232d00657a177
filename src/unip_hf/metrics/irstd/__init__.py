"""UNIP IRSTD `evaluate` module (load it by path: `unip_hf.metrics.load_metric("irstd")`)."""
