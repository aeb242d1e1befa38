"""The ``compactor`` command line."""

from __future__ import annotations

import argparse
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    import runtime

    @runtime.remote
    def square(x: int) -> int:
        return x * x

    @runtime.remote
    class Total:
        def __init__(self) -> None:
            self.total = 0

        def add(self, x: int) -> int:
            self.total += x
            return self.total

    start = time.perf_counter()
    with runtime.init(args.backend):
        total = Total.remote()
        squares = [square.remote(i) for i in range(100)]
        last = runtime.get([total.add.remote(s) for s in squares])[-1]
        print(f"sum of squares 0..99 = {last} on the {args.backend or 'local'} backend "
              f"in {time.perf_counter() - start:.2f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compactor", description="Table compaction service.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run a small end-to-end demo on this machine")
    demo.add_argument("--backend", choices=["local", "ray"], default=None)
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
