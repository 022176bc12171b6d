"""`python -m fuzzing SECONDS [RUN_SEED] [--out DIR]` (from tests/): run the fast loop against the
lookalike on sys.path, print each distinct crasher, and write them to DIR when given."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import lookalike

from . import fuzz


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m fuzzing")
    parser.add_argument("seconds", type=float)
    parser.add_argument("run_seed", type=int, nargs="?", default=0)
    parser.add_argument("--start", type=int, default=0, help="first mutant index")
    parser.add_argument("--out", type=Path, help="write each crasher's file here")
    args = parser.parse_args()
    print(f"fuzzing {lookalike.__file__} for {args.seconds:g} s, run seed {args.run_seed}")
    result = fuzz(args.seconds, args.run_seed, start=args.start)
    print(f"{result.executions} executions in {result.seconds:.1f} s "
          f"({result.per_second:.0f}/s): {result.decoded} decoded, {result.refused} refused, "
          f"{len(result.crashers)} distinct crashers")
    for crasher in result.crashers:
        print(f"\n{crasher.signature}: {result.hits[crasher.signature]} hits, first after "
              f"{crasher.found_after_s:.2f} s: mutant {crasher.index} of {crasher.seed_name} "
              f"{crasher.edits}\n  {crasher.error[:300]}")
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            slug = re.sub(r"[^a-z0-9]+", "-", crasher.signature.lower()).strip("-")[:80]
            path = args.out / f"{slug}-{crasher.seed_name}{crasher.suffix}"
            path.write_bytes(crasher.data)
            path.with_suffix(path.suffix + ".txt").write_text(
                f"{crasher.signature}\nrun seed {args.run_seed} mutant {crasher.index} "
                f"of {crasher.seed_name}: {crasher.edits}\n\n{crasher.traceback}")


if __name__ == "__main__":
    main()
