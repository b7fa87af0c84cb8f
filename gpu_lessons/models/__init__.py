"""One LightningModule per lesson, each around the course's plain ``nn.Module``."""

from gpu_lessons.models.base import Lesson
from gpu_lessons.models.classifier import BlobClassifierLesson, BlobClassifierNet, Classifier
from gpu_lessons.models.cnn import CNN, CNNLesson
from gpu_lessons.models.dropout import DropoutLesson, DropoutNet, OverfitNet
from gpu_lessons.models.mlp import MLPLesson, MNISTNet
from gpu_lessons.models.mnist_classifier import MNISTClassifier, MNISTClassifierLesson
from gpu_lessons.models.regression import LinearNet, NonLinearNet, RegressionLesson, SimpleNet
from gpu_lessons.models.schedulers import SchedulerLesson, SchedulerNet
from gpu_lessons.models.tasks import BinaryTask, MulticlassTask, RegressionTask

__all__ = [
    "CNN",
    "BinaryTask",
    "BlobClassifierLesson",
    "BlobClassifierNet",
    "CNNLesson",
    "Classifier",
    "DropoutLesson",
    "DropoutNet",
    "Lesson",
    "LinearNet",
    "MLPLesson",
    "MNISTClassifier",
    "MNISTClassifierLesson",
    "MNISTNet",
    "MulticlassTask",
    "NonLinearNet",
    "OverfitNet",
    "RegressionLesson",
    "RegressionTask",
    "SchedulerLesson",
    "SchedulerNet",
    "SimpleNet",
]
