"""The lessons' shipped configs: this folder is the repo's ``configs/``, installed as ``gpu_lessons.configs``
(``gpu-lessons fit --config cnn`` finds ``cnn.yaml`` here; ``gpu-lessons lessons`` lists them)."""
