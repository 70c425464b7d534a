"""Test action: ok."""

from hookpack.result import Result


def run(ctx):
    return Result.changed('did it', ['one thing'])
