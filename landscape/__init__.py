"""landscape: loss surfaces, curvature and roughness of PyTorch checkpoints."""

__version__ = "0.1.0"
