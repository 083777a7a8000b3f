"""Segmentation research harness: declarative specs, one PyTorch loop, MLflow tracking."""
