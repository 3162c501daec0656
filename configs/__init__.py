"""Hydra configs for trm-train, installed as the package ``trm_mlx.configs`` (``pkg://trm_mlx.configs``)."""
