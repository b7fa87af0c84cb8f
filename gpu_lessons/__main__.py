"""``python -m gpu_lessons ...``: the ``gpu-lessons`` command (fit, validate, test, predict, lessons, export,
pictures, doctor)."""

from gpu_lessons.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
