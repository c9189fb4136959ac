"""ltx-mlx: Lightricks' LTX-2 / LTX-2.3 audio+video diffusion models, ported to MLX."""

__version__ = "0.1.0"
