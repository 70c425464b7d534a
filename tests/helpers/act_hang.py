"""Test action: hang."""

import time


def run(ctx):
    time.sleep(3600)
