"""Run only by test_zz_down.py in a child pytest, which SIGTERMs it mid-test."""

import os
import time
from pathlib import Path


def test_hold_the_lab(ganeti_lab):
    Path(os.environ["SIGTERM_TARGET_MARKER"]).write_text("up\n")
    time.sleep(300)
