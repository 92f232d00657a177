"""The UNIP models: configuration, modeling (ViT, backbone, segmenters), image processing, pipelines and weight conversion."""
