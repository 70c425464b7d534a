"""``vm-testbed rootfs build``: build (or find in the cache) a Debian root filesystem."""

from __future__ import annotations

import argparse
import sys
import time

from vmtestbed import rootfs


def build_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="rootfs_command", required=True)
    build = sub.add_parser("build", help="mmdebstrap a rootfs into the cache, print its path")
    build.add_argument("--suite", choices=rootfs.SUITES, default="bookworm")
    build.add_argument("--variant", choices=rootfs.VARIANTS, default="minbase")
    build.add_argument("--include", action="append", default=[], metavar="PKG[,PKG...]",
                       help="extra Debian packages (repeat or comma-separate)")
    build.add_argument("--image", action="store_true",
                       help="also make the raw ext4 image (mke2fs -d) and print its path")
    build.add_argument("--free-mib", type=int, default=1024, help="free space in the image")
    build.add_argument("--rebuild", action="store_true", help="ignore a cached rootfs")


def run(args: argparse.Namespace) -> int:
    packages = [p for arg in args.include for p in arg.split(",") if p]
    try:
        t0 = time.monotonic()
        path = rootfs.build_rootfs(args.suite, packages, variant=args.variant,
                                   rebuild=args.rebuild)
        print(f"rootfs {path} ({time.monotonic() - t0:.1f} s)")
        if args.image:
            t0 = time.monotonic()
            image = rootfs.build_ext4_image(path, free_mib=args.free_mib)
            print(f"image {image} ({time.monotonic() - t0:.1f} s)")
    except rootfs.RootfsBuildError as exc:
        print(f"vm-testbed rootfs: {exc}", file=sys.stderr)
        return 1
    return 0
