"""LightningDataModules for the course's synthetic datasets and for (Fashion-)MNIST."""

from gpu_lessons.data.batches import EpochPermutation, ResumableDataLoader
from gpu_lessons.data.image_folder import ImageFolderDataModule
from gpu_lessons.data.mnist import DatasetError, DatasetMissingError, MNISTDataModule, preprocess, preprocess_batch
from gpu_lessons.data.synthetic import BlobsDataModule, CurveDataModule, LineDataModule, RandomFeaturesDataModule
from gpu_lessons.data.tensor_datamodule import TensorDataModule

__all__ = [
    "BlobsDataModule",
    "CurveDataModule",
    "DatasetError",
    "DatasetMissingError",
    "EpochPermutation",
    "ImageFolderDataModule",
    "LineDataModule",
    "MNISTDataModule",
    "RandomFeaturesDataModule",
    "ResumableDataLoader",
    "TensorDataModule",
    "preprocess",
    "preprocess_batch",
]
