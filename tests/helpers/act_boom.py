"""Test action: boom."""

def run(ctx):
    raise RuntimeError('boom')
