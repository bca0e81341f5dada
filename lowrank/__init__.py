"""lowrank package."""
