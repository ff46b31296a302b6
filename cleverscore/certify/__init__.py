"""Certified robustness bounds by linear bound propagation (CROWN) in TensorFlow."""

from .graph import Graph, from_keras

__all__ = ["Graph", "from_keras"]
