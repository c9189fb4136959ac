"""ltx-mlx: Lightricks' LTX-2 / LTX-2.3 audio+video diffusion models, ported to MLX."""

__version__ = "0.1.0"


def __getattr__(name):
    # `ltx_mlx.load` pulls in MLX and every model file: only when asked for.
    if name in ("load", "Pipeline"):
        from .pipelines import api

        return getattr(api, name)
    if name == "LTXModelBundle":
        from .weights import load as bundle

        return bundle.LTXModelBundle
    raise AttributeError(f"module 'ltx_mlx' has no attribute {name!r}")
