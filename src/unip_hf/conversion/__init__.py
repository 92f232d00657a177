"""Weights from elsewhere into UNIP models: official UNIP and timm checkpoints read safely, mmseg segmenters, transformers ViT families; the card that names the source and its licence."""
