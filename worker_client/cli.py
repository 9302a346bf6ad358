"""``btard-worker``: join a BTARD Swarm run from a volunteer's machine."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="btard-worker",
        description="Contribute compute to a BTARD Swarm training run.",
    )
    parser.add_argument("--token", help="worker token from your volunteer page (/tokens/)")
    parser.add_argument("--server", default="http://127.0.0.1:8000", help="site address (default: %(default)s)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="override device detection")
    parser.add_argument("--data-dir", default=None, help="where datasets and caches live")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token is required (create one on the site's /tokens/ page)")
    print("btard-worker: networked training is not wired up in this build yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
