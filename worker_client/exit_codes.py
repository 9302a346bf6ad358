"""``btard-worker``'s exit codes, defined once (the CLI and the networked worker both return them).

Torch-free on purpose: ``btard-worker --help`` and the CLI's usage errors import it without loading
the worker.
"""

from __future__ import annotations

EXIT_OK = 0  # finished (--max-steps) or stopped with Ctrl-C
EXIT_USAGE = 2  # bad usage (argparse's own code)
EXIT_REFUSED = 3  # the site refused this worker: token refused or revoked, banned, a run it cannot join
EXIT_STARTUP = 4  # could not start: identity key, p2p daemon, a run it cannot set up

__all__ = ["EXIT_OK", "EXIT_REFUSED", "EXIT_STARTUP", "EXIT_USAGE"]
