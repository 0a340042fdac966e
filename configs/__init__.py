"""Shipped Hydra configs: the ``initspec`` presets and example ``model`` configs."""
