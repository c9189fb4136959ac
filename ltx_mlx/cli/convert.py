"""`convert.py` / `ltx-mlx-convert`: official checkpoints → an MLX model folder. Not available yet."""

import sys


def main(argv=None) -> int:
    print("ltx-mlx: conversion is not available yet — the model components are being ported first "
          "(see README.md, 'Status').", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
