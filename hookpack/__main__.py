import sys

from hookpack.cli import main

sys.exit(main())
