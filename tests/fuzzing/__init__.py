"""A seeded fuzzer for lookalike's decoders: small valid images in every format, mutated where
their structure and metadata are, decoded as uploads and indexing decode them.

``fuzz(seconds, run_seed)`` runs the fast loop in child processes with memory and time limits and
returns a :class:`FuzzResult` (executions, crashers); ``check(files)`` decodes files the same
way; ``mutant(run_seed, index)`` makes one mutant again (the same bytes wherever Pillow and this
package are the same). ``python -m fuzzing SECONDS SEED`` (from ``tests/``) runs the loop from
the command line and writes what it finds. The children are started with ``spawn``: a script
that calls ``fuzz`` or ``check`` does so under ``if __name__ == "__main__":``.
"""

from .isolated import Verdict, check, fuzz
from .loop import Crasher, FuzzResult, crash, decode_target, outcome, run_here, signature
from .mutate import Mutant, mutant
from .seeds import Seed, seeds

__all__ = ["Crasher", "FuzzResult", "Mutant", "Seed", "Verdict", "check", "crash",
           "decode_target", "fuzz", "mutant", "outcome", "run_here", "seeds", "signature"]
