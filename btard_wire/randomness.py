"""Shared randomness without torch: the MPRNG hashes and the one validator draw (paper Sec. 3.2, 3.3).

Paper Sec. 3.2 (MPRNG): each peer commits to ``H(x_i)`` for a fresh 256-bit ``x_i``, then reveals
``x_i`` once every commitment is in; ``r_t = H(x_1 | ... | x_n)`` in group order. As long as one peer
is honest nobody can bias ``r_t``. A withheld or mismatching reveal is publicly provable.

Everything here is domain-separated SHA-256 (the details are **ours**) and runs without torch, so the
peers, the in-memory board, the fake site of the tests and the site compute the same values:

- ``r_{-1}`` of a run (:func:`genesis_randomness`) and the public chain for a step whose MPRNG failed
  (:func:`skipped_randomness`);
- the public batch seed of peer i at step t, ``seed_i_t = H(r_{t-1} | run | t | i)`` (Sec. 3.3);
- the probation seed of a candidate (:func:`probation_seed`);
- each candidate's probation panel of two validators (:func:`draw_probation_panels`);
- the validators of step t and their targets (contributors of step t-1), drawn from ``r_t``, the
  output of step t's MPRNG, revealed only after step t-1 is closed on the board and after step t's
  aggregation results are fixed (:func:`draw_validators`; docs/protocol.md, Sec. 3.3).

The random projection ``z`` of a step needs torch and stays in ``worker_client.btard.mprng``.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterator, Sequence

from .errors import ProtocolError

GENESIS_DOMAIN = b"btard-genesis"
VALIDATORS_DOMAIN = b"btard-validators"
TARGETS_DOMAIN = b"btard-targets"
PROBATION_DOMAIN = b"btard-probation-validators"
GROUP_DOMAIN = b"btard-group-order"
ROTATION_DOMAIN = b"btard-group-rotation"


def _h(*parts: bytes) -> bytes:
    """SHA-256 over length-prefixed parts (no two part lists hash the same input)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(4, "little"))
        h.update(p)
    return h.digest()


def genesis_randomness(run: str, seed: int = 0) -> bytes:
    """``r_{-1}`` of a run: public, fixed by the run's name and seed."""
    return _h(GENESIS_DOMAIN, run.encode(), str(seed).encode())


def skipped_randomness(r_prev: bytes, run: str, step: int) -> bytes:
    """``r_t`` for a step whose MPRNG did not complete (aborted step): a public hash chain, so the next
    step's seeds are still fixed and known to all **(ours)**."""
    return _h(b"btard-skip", r_prev, run.encode(), str(step).encode())


@functools.lru_cache(maxsize=512)  # a few steps' commitments: a long-lived site must not hold thousands
def mprng_commitment(x: bytes, *, run: str, step: int, sender: str) -> str:
    """``H(x_i)`` bound to the run, step and sender so nobody can copy another peer's commitment."""
    if len(x) != 32:
        raise ProtocolError("an MPRNG secret is 32 bytes")
    return _h(b"btard-mprng", run.encode(), str(step).encode(), sender.encode(), x).hex()


def combine_reveals(values_in_group_order: Sequence[bytes]) -> bytes:
    """``r_t = H(x_1 | ... | x_n)`` over the revealed secrets in group order."""
    return _h(b"btard-r", *values_in_group_order)


@functools.lru_cache(maxsize=4096)
def batch_seed(r_prev: bytes, run: str, step: int, peer: str) -> int:
    """``seed_i_t = H(r_{t-1} | run | t | i)`` as a non-negative 63-bit integer."""
    digest = _h(b"btard-seed", r_prev, run.encode(), str(step).encode(), peer.encode())
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def probation_seed(*, run: str | int, seed: int, step: int, peer: str) -> int:
    """The public seed a candidate computes its probation gradient on at ``step`` (62-bit), from the
    run's id and seed (the site assigns it when it forms the step's group)."""
    digest = hashlib.sha256("|".join(("probation", str(run), str(seed), str(step), peer)).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _words(key: bytes, domain: bytes) -> Iterator[int]:
    """An endless stream of 64-bit words: SHA-256 of (domain, key, counter), counter = 0, 1, ..."""
    counter = 0
    while True:
        block = _h(domain, key, counter.to_bytes(8, "little"))
        for i in range(0, 32, 8):
            yield int.from_bytes(block[i:i + 8], "little")
        counter += 1


def _below(words: Iterator[int], n: int) -> int:
    """Uniform in ``[0, n)`` by rejection sampling (no modulo bias)."""
    limit = (1 << 64) - (1 << 64) % n
    while True:
        w = next(words)
        if w < limit:
            return w % n


def keyed_shuffle(randomness: bytes, domain: bytes, items: Sequence[str]) -> list[str]:
    """Fisher-Yates shuffle of ``items`` driven by SHA-256 of ``randomness``: a pure function of
    ``(randomness, domain, items)``, uniform over permutations for a uniform ``randomness``."""
    out = list(items)
    words = _words(randomness, domain)
    for i in range(len(out) - 1, 0, -1):
        j = _below(words, i + 1)
        out[i], out[j] = out[j], out[i]
    return out


def draw_validators(randomness: bytes, *, group: Collection[str], targets: Collection[str],
                    m: int) -> dict[str, str]:
    """The validators of a step and their targets: ``{validator: target}`` (Sec. 3.3).

    Up to ``m`` validators from ``group``, each with a distinct target among ``targets`` (the
    contributors of the step under check) that are also in ``group``; a validator never gets itself.
    ``randomness`` is the step's MPRNG output ``r_t``. The input order does not matter (both sets are
    sorted before the keyed shuffle), so every party that knows the same sets gets the same draw.
    Empty when there is nothing to validate (``m <= 0``, no target in the group, a group of one)."""
    members = sorted(set(group))
    candidates = sorted(set(targets) & set(members))
    if m <= 0 or not candidates or len(members) < 2:
        return {}
    order = keyed_shuffle(randomness, VALIDATORS_DOMAIN, members)
    targets_order = keyed_shuffle(randomness, TARGETS_DOMAIN, candidates)
    out: dict[str, str] = {}
    used: set[str] = set()
    for v in order:
        if len(out) >= m:
            break
        target = next((t for t in targets_order if t != v and t not in used), None)
        if target is None:
            continue
        out[v] = target
        used.add(target)
    return out


# how many times the validators a step draws after a step that banned someone for a wrong recomputation
ALARM_FACTOR = 2


def check_alarm_factor(alarm_factor: object) -> int:
    """``alarm_factor`` if it is a whole number >= 1 (1: no alarm); else :class:`ProtocolError` (a
    ``ValueError``) saying so: the one check the peers' parameters and the validator count share."""
    if isinstance(alarm_factor, bool) or not isinstance(alarm_factor, int) or alarm_factor < 1:
        raise ProtocolError(f"alarm_factor must be a whole number >= 1 (1: off), not {alarm_factor!r}")
    return alarm_factor


def validators_for_step(m: int, *, prev_recalc_ban: bool, alarm_factor: int) -> int:
    """How many validators step t draws (**ours**, docs/protocol.md "More validators after a ban"): ``m``,
    or ``alarm_factor * m`` when step t-1 ended with a ban for a wrong recomputation. Such a ban proves a
    coalition is attacking now; colluders attack together, so the ones still unchecked face twice the
    validators in the next step, at no cost in a run nobody attacks. A fact of step t-1's board that every
    member of step t that draws validators holds (the validators' targets are step t-1's contributors, so
    only members of step t-1 draw), so every peer, the site and the boards get the same number."""
    check_alarm_factor(alarm_factor)
    return m * alarm_factor if prev_recalc_ban and m > 0 else m


PROBATION_PANEL = 2  # validators per candidate and step: promotion and rejection need two that agree


def draw_probation_panels(randomness: bytes, *, members: Collection[str], candidates: Collection[str],
                          size: int = PROBATION_PANEL) -> dict[str, list[str]]:
    """``{candidate: [validator, ...]}``: the ``size`` distinct active members that each check a candidate's
    probation gradient (issue 12, invariant 9: a candidate is promoted or rejected only when two independent
    validators agree, :func:`btard_wire.probation.probation_outcome`).

    Keyed shuffles of the sorted members (the pool) and candidates, then candidate i gets the pool's
    positions ``size*i .. size*i + size - 1`` (mod the pool), so the panel's members are distinct, the load is
    even (every member checks within one of ``size * candidates / members`` candidates) and nobody picks its
    validators by its key (security review, finding 10). A group of fewer than ``size`` members gives each
    candidate all of them (one member: a panel of one, which decides nothing). The site draws from the
    previous step's MPRNG output, which no candidate knew when it chose its key."""
    pool = keyed_shuffle(randomness, VALIDATORS_DOMAIN + b"/probation", sorted(set(members)))
    if not pool or size <= 0:
        return {}
    k = min(size, len(pool))
    order = keyed_shuffle(randomness, PROBATION_DOMAIN, sorted(set(candidates) - set(pool)))
    return {cand: [pool[(k * i + j) % len(pool)] for j in range(k)] for i, cand in enumerate(order)}


def group_order(randomness: bytes, members: Collection[str], *, size: int | None = None) -> list[str]:
    """A step's group in order (peer ``group[j]`` aggregates part j and reveals j-th in the MPRNG): the
    first ``size`` of a keyed shuffle of the sorted eligible ``members`` (all when ``size`` is None),
    themselves in keyed-shuffle order. The site draws from the previous step's MPRNG output, so no peer
    chooses its part or its seat in the group by choosing its key (issue 12, invariant 9)."""
    chosen = sorted(set(members))
    if size is not None and len(chosen) > size:
        chosen = sorted(keyed_shuffle(randomness, ROTATION_DOMAIN, chosen)[:max(0, size)])
    return keyed_shuffle(randomness, GROUP_DOMAIN, chosen)
