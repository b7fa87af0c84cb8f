"""``python -m gpu_lessons ...`` runs the lessons' CLI."""

from gpu_lessons.cli import cli_main

if __name__ == "__main__":
    cli_main()
