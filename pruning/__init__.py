"""pruning package."""
