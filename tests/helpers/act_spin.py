"""Test action: spin."""

def run(ctx):
    while True:
        pass
