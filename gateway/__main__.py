"""python -m gateway: see gateway/cli.py and docs/service.md."""
import sys

from gateway.cli import main

if __name__ == "__main__":
    sys.exit(main())
