"""Low-rank experiments (python run.py --list)."""
