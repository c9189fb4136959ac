"""`generate.py` / `ltx-mlx-generate`: text(+image/audio) → mp4 with audio. Not available yet."""

import sys


def main(argv=None) -> int:
    print("ltx-mlx: generation is not available yet — the model components are being ported first "
          "(see README.md, 'Status').", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
