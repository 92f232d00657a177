"""Pre-training: NMI-guided hybrid attention distillation (NMI-HAD) and the MAE teacher."""
