"""NAS experiments."""
