"""``python -m gpu_lessons ...``: the ``gpu-lessons`` command."""

from gpu_lessons.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
