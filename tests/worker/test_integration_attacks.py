"""Rational attackers (security review 2026-12, issue 12) against the real site under Daphne (PostgreSQL +
Redis) and ``btard-worker`` processes on loopback: the phantom accusation digest, the absorber's forged
aggregate and the late ELIMINATE. Each test asserts what the honest peers end up with (nobody honest
banned, bit-identical parameters at the last step, steps still applied after the attack) and what the
attacker gets (banned, refused by the site, or a gain bounded by the aggregate bound).

The networked worker builds each attacker in its own process; a coalition shares one file
(:class:`~worker_client.btard.attacks.SharedCollusion`, ``BTARD_COLLUSION``: the common seed, and each
colluder's peer id added as it starts), so the absorber test's two absorbers are one coalition forging in
one common direction; :class:`~worker_client.btard.attacks.Absorber` is a forger and its own absorber.
(The worker builds the shared coalition with ``worker_client.collusion.collusion_from_env``.)
"""

from __future__ import annotations

import json
import math

import pytest

from worker_client.collusion import COLLUSION_ENV

from .siteproc import SiteHarness
from .test_integration import RUN_FIELDS, last_hash_at

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Short phases: a step in which an attacker is banned closes at the step deadline (the attacker exits
# without reporting), and that deadline covers the sum of the phase deadlines.
FIELDS = RUN_FIELDS | {"min_peers": 99, "phase_timeout": 6.0, "step_timeout": 30.0, "validators_per_step": 1}


@pytest.fixture
def site(postgres_url, redis_url, tmp_path):
    with SiteHarness(postgres_url, redis_url, tmp_path) as harness:
        yield harness


def peer_id(worker) -> str:
    return next(e for e in worker.events() if e.get("event") == "start")["peer_id"]


def site_errors(worker, code: str) -> list[str]:
    """The board's refusals the worker was told of: ``refused`` events for its broadcasts (``...: CODE: ...``),
    ``site: CODE: ...`` error events for other messages."""
    return [e["message"] for e in worker.events()
            if (e.get("event") == "refused" and f": {code}: " in e["message"])
            or (e.get("event") == "error" and f"site: {code}" in e["message"])]


def run_swarm(site, *, honest: int, attackers: int, behaviour: str, steps: int, coalition=None, **fields):
    """``coalition``: the path of the file the attackers coordinate through (None: each on its own)."""
    run = site.create_run(volunteers=honest + attackers, **(FIELDS | fields))
    site.start()
    tokens = [t["token"] for t in run["tokens"]]
    good = [site.start_worker(f"w{i}", tokens[i], max_steps=steps) for i in range(honest)]
    env = site.group.env  # the environment the harness starts its processes with
    if coalition is not None:
        site.group.env = {**env, COLLUSION_ENV: str(coalition)}
    try:
        bad = [site.start_worker(f"{behaviour}{i}", tokens[honest + i], max_steps=steps, behaviour=behaviour)
               for i in range(attackers)]
    finally:
        site.group.env = env
    site.start_when_ready(good + bad, min_peers=honest)
    site.wait(lambda: all(w.proc.poll() is not None for w in good), 200, "the honest workers to finish")
    site.wait(lambda: all(w.proc.poll() is not None for w in bad), 60, "the attackers to exit")
    assert [w.proc.returncode for w in good] == [0] * honest, [w.stderr() for w in good]
    return run, good, bad


def site_bans(site, run) -> list[tuple[str, str]]:
    out = site.shell("import json; from moderation.models import Ban; "
                     f"print(json.dumps([(b.peer_id, b.evidence_kind) for b in Ban.objects.filter(run_id={run['run_id']})]))")
    return [tuple(b) for b in json.loads(out.strip().splitlines()[-1])]


def assert_honest_agree(good, steps: int, *, last_applied: bool = True) -> None:
    outcomes = {w.name: [e["outcome"] for e in w.steps_done()] for w in good}
    assert all(len(o) == steps for o in outcomes.values()), outcomes
    for t in range(steps):  # every honest peer reaches the same outcome in every step
        assert len({o[t] for o in outcomes.values()}) == 1, (t, outcomes)
    # training goes on after the attack (when the attack may still be running at the last step: a step
    # after the first one is applied)
    assert all(o[-1] == "applied" if last_applied else "applied" in o[1:] for o in outcomes.values()), outcomes
    hashes = {last_hash_at(w, steps - 1) for w in good}
    assert len(hashes) == 1 and None not in hashes


def test_it_drops_the_step_with_a_phantom_digest_and_bans_the_forger_not_an_honest_peer(site):
    """The forger publishes ``-a_j`` and lists an accusation digest nobody broadcast, so that peers wait
    for it instead of checking its aggregate: the site refuses the report (``unheld_digest``), the
    honest peers run the fixed-point check and ban it; no step with the forgery is applied."""
    steps = 3
    run, good, (forger,) = run_swarm(site, honest=4, attackers=1, behaviour="phantom_digest", steps=steps)
    forger_peer = peer_id(forger)
    bans = site_bans(site, run)
    assert {p for p, _ in bans} == {forger_peer}, bans
    assert {k for _, k in bans} <= {"bad_aggregate", "bad_broadcast"}, bans
    assert site_errors(forger, "unheld_digest"), [e for e in forger.events() if e.get("event") in ("error", "refused")]
    assert_honest_agree(good, steps)
    # the forger attacks from step 0: the step it took part in as an aggregator is not applied
    first = [e["outcome"] for e in good[0].steps_done()]
    assert first[0] == "dropped", first
    assert all(forger_peer in {p for e in w.steps_done() for p in e.get("banned", [])}
               or any(e.get("event") == "ban" and e.get("peer") == forger_peer for e in w.events()) for w in good)


def test_a_coalition_of_absorbers_in_two_processes_stays_bounded_and_no_honest_peer_is_banned(site, tmp_path):
    """Two absorbers, one coalition across processes (one shared file: a common seed, so both forge in
    the same direction, and each other's ids): each publishes a forged aggregate of its part and a scalar
    that makes the fixed-point check pass. Whatever is applied moves the model at most by the aggregate
    bound: the honest loss stays finite and near its start; the absorbers are banned (recalculation) or
    their steps dropped."""
    steps = 5
    coalition = tmp_path / "coalition.json"
    coalition.write_text(json.dumps({"seed": 7}))
    run, good, bad = run_swarm(site, honest=3, attackers=2, behaviour="absorber", steps=steps,
                               coalition=coalition, validators_per_step=2)
    bad_peers = {peer_id(w) for w in bad}
    shared = json.loads(coalition.read_text())
    assert shared["seed"] == 7 and set(shared["members"]) == bad_peers  # both joined the one coalition
    bans = site_bans(site, run)
    assert {p for p, _ in bans} <= bad_peers, bans  # no honest ban
    assert {k for _, k in bans} <= {"recalc", "bad_aggregate"}, bans
    assert_honest_agree(good, steps, last_applied=False)  # an absorber may be validated only in the last step
    losses = [e["loss"] for e in good[0].steps_done()]
    assert all(loss is not None and math.isfinite(loss) for loss in losses), losses
    # no forged step took the model away. (The loss is the only view of the update from outside. The
    # step-0 forgery has no previous step's spread to be bounded by, and is applied.)
    assert max(losses) < 2.0 * losses[0], losses
    outcomes = [e["outcome"] for e in good[0].steps_done()]
    assert bans or "dropped" in outcomes, (bans, outcomes)


def test_a_late_eliminate_decides_nothing_and_every_honest_peer_applies_the_same_step(site):
    """The attacker posts an ELIMINATE of an honest peer right after its own validation report: the
    site refuses it (``too_late``), no report lists it, so nobody is eliminated or banned and every
    peer, the attacker included, applies the same updates."""
    steps = 3
    run, good, (late,) = run_swarm(site, honest=3, attackers=1, behaviour="late_eliminate", steps=steps)
    assert late.proc.returncode == 0, late.stderr()
    assert site_bans(site, run) == []
    assert site_errors(late, "too_late"), [e for e in late.events() if e.get("event") in ("error", "refused")]
    assert_honest_agree(good, steps)
    outcomes = {w.name: [e["outcome"] for e in w.steps_done()] for w in good + [late]}
    assert all(o == ["applied"] * steps for o in outcomes.values()), outcomes
    assert last_hash_at(late, steps - 1) == last_hash_at(good[0], steps - 1)
    assert not any(e.get("event") in ("eliminated", "ban") for w in good for e in w.events())
