"""Test action: nay."""

from hookpack.result import Result


def run(ctx):
    return Result.veto('not today')
