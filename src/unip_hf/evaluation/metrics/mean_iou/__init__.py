"""UNIP mean IoU `evaluate` module (load it by path: `unip_hf.evaluation.metrics.load_metric("mean_iou")`)."""
