"""``python -m gpu_lessons ...`` runs the lessons' CLI."""

from gpu_lessons.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
