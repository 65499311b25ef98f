"""recsys-export: train PyTorch recommenders and export verified inference bundles."""

__version__ = "0.1.0"
