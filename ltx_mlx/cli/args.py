"""argparse actions the two commands share."""

from __future__ import annotations

import argparse
import math


def finite_float(text: str) -> float:
    """argparse `type=` for a number: nan and +-inf (which float() accepts) are usage errors."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


class PathAndStrength(argparse.Action):
    """`PATH [STRENGTH]` → `(path, strength)`, strength 1.0 when omitted (as the official --lora). Repeatable
    flags collect a list; `--distilled-lora` (given once) stores the pair itself."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) > 2:
            raise argparse.ArgumentError(self, f"takes PATH and an optional STRENGTH, got {len(values)} values")
        try:
            item = (values[0], finite_float(values[1]) if len(values) == 2 else 1.0)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentError(self, f"STRENGTH must be a finite number, got {values[1]!r}") from None
        if self.dest == "distilled_lora":
            setattr(namespace, self.dest, item)
        else:
            setattr(namespace, self.dest, (getattr(namespace, self.dest) or []) + [item])
