"""Data layer of unip_hf for UNIP (Zhang et al., ICLR 2025): InfMix, infrared segmentation sets, transforms.

`InfMix` is a `datasets` builder over a folder or manifest of infrared and RGB sources; the segmentation builders
read SODA, MFNet, SCUT-Seg, SIRST, NUDT-SIRST / IRSTD-1K, split folders, MassMIND and generic layouts.
"""

# `__all__` holds what the README documents; the other names stay importable from here.
from unip_hf.data.export import export_parquet, push_to_hub, write_dataset_readme
from unip_hf.data.infmix import InfMix, InfMixConfig, derive_config_name, discover_sources, format_report_table, read_report
from unip_hf.data.segmentation import (
    IGNORE_INDEX,
    SEGMENTATION_BUILDERS,
    SEGMENTATION_SPECS,
    GenericFolderBuilder,
    IrstdBuilder,
    MassMindBuilder,
    MFNetBuilder,
    ScutSegBuilder,
    SegmentationBuilder,
    SegmentationSpec,
    SirstBuilder,
    SodaBuilder,
    SplitFolderBuilder,
    available_splits,
    load_segmentation_dataset,
    segmentation_metadata,
)
from unip_hf.data.synthetic import SYNTHETIC_CLASSES, make_thermal_scene, write_synthetic_dataset
from unip_hf.data.transforms import (
    UNIP_MEAN,
    UNIP_STD,
    IndexedTransformDataset,
    PretrainTransform,
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    sample_rng,
)

__all__ = [
    "InfMix", "format_report_table", "load_segmentation_dataset", "segmentation_metadata", "write_synthetic_dataset",
    "PretrainTransform", "SegmentationTrainTransform", "SegmentationEvalTransform", "IndexedTransformDataset",
]
