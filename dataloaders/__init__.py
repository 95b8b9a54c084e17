"""Dataset readers, patch sampling and loaders for CVRKD-IQA."""

from dataloaders.base import MODES, REFERENCE_KEY, IQADataset, Sample
from dataloaders.datasets import BID, CSIQ, LIVE, LIVEC, PIPAL, TID2013, KADID10k, KonIQ10k
from dataloaders.image_io import list_reference_images, load_rgb
from dataloaders.loaders import (
    DATASET_NAMES,
    DEFAULT_DIRS,
    EpochSampler,
    ShardedBatchSampler,
    build_dataset,
    build_loader,
    dataset_class,
    set_loader_epoch,
    split_contents,
)

__all__ = [
    "BID",
    "CSIQ",
    "DATASET_NAMES",
    "DEFAULT_DIRS",
    "LIVE",
    "LIVEC",
    "MODES",
    "PIPAL",
    "REFERENCE_KEY",
    "TID2013",
    "EpochSampler",
    "IQADataset",
    "KADID10k",
    "KonIQ10k",
    "Sample",
    "ShardedBatchSampler",
    "build_dataset",
    "build_loader",
    "dataset_class",
    "list_reference_images",
    "load_rgb",
    "set_loader_epoch",
    "split_contents",
]
