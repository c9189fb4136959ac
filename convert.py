import sys

from ltx_mlx.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
