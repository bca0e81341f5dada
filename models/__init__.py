"""Plain Flax models with no compression hooks; ``models.zoo`` lists them as data."""
