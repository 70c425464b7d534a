import sys

from hookpack.cli import run

sys.exit(run())
