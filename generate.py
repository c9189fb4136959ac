import sys

from ltx_mlx.cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
