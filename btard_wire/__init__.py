"""The wire contract between BTARD peers and the site: torch-free, pydantic + cryptography only.

Both sides import it and nothing else of each other: the volunteer package (``worker_client``) and the
site (``platform/``) each build on ``btard_wire``, never on one another (``tests/test_layering.py``).

- :mod:`.errors`    ``CodedError(code, message)`` and the protocol's coded errors
- :mod:`.json`      the one "parse untrusted JSON" helper (size cap, depth cap, version, schema)
- :mod:`.envelope`  signed envelopes, canonical JSON, identity keys (no files), replay guard
- :mod:`.payloads`  the payload schema of every broadcast phase, tensor headers, fault kinds
- :mod:`.control`   worker <-> site control messages and close codes

This module holds only the constants every other one shares, so importing it loads nothing.
"""

PROTOCOL_VERSION = 1

# Phases of a BTARD step whose messages are broadcast through the site (see docs/protocol.md).
# :mod:`btard_wire.payloads` defines each phase's payload schema.
BROADCAST_PHASES = (
    "commit",        # C_i: hashes of the n gradient parts
    "agg_result",    # aggregator j: H(a_j) and the distances d_kj
    "mprng_commit",  # H(x_i)
    "mprng_reveal",  # x_i
    "scalars",       # s_ij = <z[j], g_i[j] - a_j>
    "accuse",        # ACCUSE(i, j) with evidence
    "eliminate",     # ELIMINATE(i, j): unprovable fault
    "verdict",       # a peer's signed verdict on an accusation; the site bans on a majority
    "validation",    # every member's end-of-checks report; a recalculation validator names its target
    "probation",     # a probation validator's report on its candidate (site-only: stored, never relayed)
)
# One message per peer and step, and the bulletin board decides who posted in time: the site closes these
# phases at the group's deadline (:class:`btard_wire.control.PhaseClosed`) and every peer acts on its list.
BOARD_PHASES = ("commit", "agg_result", "mprng_commit", "mprng_reveal", "scalars", "validation")
# ``probation`` is not a board phase: a validator posts at most one report per (candidate, step), apart from
# its own step-t ``validation`` report, so the two never share a single-message slot (the site would read two
# different signed messages in one slot as equivocation and ban the honest validator).
