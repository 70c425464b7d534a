"""``vm-testbed netbox build|serve``: the cached NetBox tree, and a server for humans.

``build`` makes (or finds in the cache) the tree :func:`vmtestbed.netbox.running_netbox`
starts, printing each step's time; ``python -m vmtestbed.netbox_cli build`` does the same.
``serve`` runs NetBox on loopback until Ctrl-C and prints its URL and the test token.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

from vmtestbed import netbox, rootfs


def build_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="netbox_command", required=True)
    build = sub.add_parser("build", help="build the NetBox tree into the cache, print its path")
    build.add_argument("--rebuild", action="store_true", help="ignore a cached NetBox tree")
    serve = sub.add_parser("serve", help="run NetBox on loopback until Ctrl-C")
    serve.add_argument("--port", type=int, help="default: a free one")
    serve.add_argument("--address", default="127.0.0.1")


def run(args: argparse.Namespace) -> int:
    try:
        if args.netbox_command == "build":
            return _build(args.rebuild)
        return _serve(args.address, args.port)
    except (netbox.NetBoxError, rootfs.RootfsBuildError) as exc:
        print(f"vm-testbed netbox: {exc}", file=sys.stderr)
        return 1


def _build(rebuild: bool) -> int:
    started = time.monotonic()
    tree = netbox.build_netbox_root(rebuild=rebuild, progress=lambda line: print(line,
                                                                                  flush=True))
    print(f"netbox {tree} ({time.monotonic() - started:.1f} s)")
    return 0


def _serve(address: str, port: int | None) -> int:
    # SIGTERM (kill, timeout, a service manager) stops NetBox as Ctrl-C does; without
    # this Python would exit at once and leave NetBox running.
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="vmtestbed-netbox-") as workdir:
        started = time.monotonic()
        with netbox.running_netbox(Path(workdir), address=address, port=port) as server:
            try:  # from the first line on: a reader may stop it as soon as it reads that
                print(f"NetBox {netbox.NETBOX_VERSION} at {server.url} "
                      f"(up in {time.monotonic() - started:.1f} s)\n"
                      f"token (v1): {server.token}\ntoken (v2): {server.token_v2}\n"
                      f"user {netbox.ADMIN_USER}, password {netbox.ADMIN_PASSWORD}\n"
                      f"log: {server.log}\nCtrl-C stops it.", flush=True)
                while server.process is not None and server.process.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vmtestbed.netbox_cli", description=__doc__)
    build_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
