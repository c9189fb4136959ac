"""`ltx_mlx.convert.convert`: the public name of the converter (it lives in `ltx_mlx.weights.convert`)."""

from .weights.convert import ConvertOptions, convert, quantization_plans

__all__ = ["ConvertOptions", "convert", "quantization_plans"]
