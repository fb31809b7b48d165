"""python -m console: see console/cli.py and docs/console.md."""
import sys

from console.cli import main

if __name__ == "__main__":
    sys.exit(main())
