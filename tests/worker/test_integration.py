"""End to end: the site under Daphne (PostgreSQL + Redis) and ``btard-worker`` processes on loopback.

Each test starts its own database, site and workers, trains digits-mlp for a few steps, and kills
every process it started (by PID, with the workers' p2pd daemons) even when it fails.
"""

from __future__ import annotations

import json
import signal

import pytest

from .siteproc import SiteHarness, kill_group

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

# Small deadlines keep a step that lost a peer short; epoch_steps=1 keeps an ELIMINATE pair out for
# the rest of the (one-step) epoch only, so a run of a handful of peers is not starved by one crash.
RUN_FIELDS = dict(phase_timeout=30.0, step_timeout=90.0, batch_size=16, validators_per_step=0, epoch_steps=1)


def last_hash_at(worker, step: int) -> str | None:
    for event in worker.steps_done():
        if event["step"] == step:
            return event["params_sha256"]
    return None


@pytest.fixture
def site(postgres_url, redis_url, tmp_path):
    with SiteHarness(postgres_url, redis_url, tmp_path) as harness:
        yield harness


def test_five_workers_ban_the_lying_aggregator_and_keep_identical_parameters(site):
    run = site.create_run(volunteers=5, **(RUN_FIELDS | dict(min_peers=99, checkpoint_every=2)))
    site.start()
    tokens = [t["token"] for t in run["tokens"]]
    steps = 4
    honest = [site.start_worker(f"w{i}", tokens[i], max_steps=steps) for i in range(4)]
    liar = site.start_worker("liar", tokens[4], max_steps=steps, behaviour="wrong_aggregate")
    site.start_when_ready(honest + [liar], min_peers=4)
    site.wait(lambda: all(w.proc.poll() is not None for w in honest), 150, "the honest workers to finish")
    site.wait(lambda: liar.proc.poll() is not None, 30, "the attacker to exit")

    assert [w.proc.returncode for w in honest] == [0, 0, 0, 0], [w.stderr() for w in honest]
    assert liar.proc.returncode == 3  # told it is banned, exits with the refusal code
    bans = site.api("/api/bans/")["bans"]
    liar_peer = next(e for e in liar.events() if e.get("event") == "start")["peer_id"]
    assert [b["peer"] for b in bans] == [liar_peer]
    assert bans[0]["account"] == "volunteer5" and bans[0]["run"] == run["run_id"]
    # the honest peers end every step with bit-identical parameters
    final = steps - 1
    hashes = {last_hash_at(w, final) for w in honest}
    assert len(hashes) == 1 and None not in hashes
    # a checkpoint after step 1 or 3, confirmed by a strict majority of its group's state hashes
    checkpoint = site.api(f"/api/runs/{run['run_id']}/")["checkpoint"]
    assert checkpoint is not None and checkpoint["step"] in (1, 3), checkpoint
    assert checkpoint["confirmations"] * 2 > checkpoint["group_size"]
    # at start-up (or after the first step, when nobody could check yet) another peer dialled each worker
    # (the liar's own check may race its exit once it is banned: the helper then finds no one to dial)
    reach = {p["account"]: p["reachable"] for p in site.api(f"/api/runs/{run['run_id']}/")["peers"]
             if p["account"] != "volunteer5"}
    assert False not in reach.values() and sum(v is True for v in reach.values()) >= 3, reach
    assert all(any(e["outcome"] == "applied" for e in w.steps_done()) for w in honest)
    assert all(liar_peer in {p for e in w.steps_done() for p in e.get("banned", [])}
               or any(e.get("event") == "ban" for e in w.events()) for w in honest)


def test_the_site_records_the_validators_the_workers_drew_and_they_ban_a_gradient_attacker(site):
    """No validators in the group the site sends: every worker draws them from the step's r_t; the site
    computes the same draw from its board (runs.services.step_validators) and keeps it per step."""
    # m = 4 of 4: with m = 3 the flipper goes unchecked in a quarter of the steps (0.4% of 5-step runs)
    run = site.create_run(volunteers=4, **(RUN_FIELDS | dict(min_peers=99, validators_per_step=4)))
    site.start()
    tokens = [t["token"] for t in run["tokens"]]
    steps = 5
    honest = [site.start_worker(f"w{i}", tokens[i], max_steps=steps) for i in range(3)]
    flipper = site.start_worker("flipper", tokens[3], max_steps=steps, behaviour="sign_flip")
    site.start_when_ready(honest + [flipper], min_peers=3)  # every worker is welcomed: all 4 form step 0
    site.wait(lambda: all(w.proc.poll() is not None for w in honest), 200, "the honest workers to finish")
    site.wait(lambda: flipper.proc.poll() is not None, 30, "the attacker to exit")

    assert [w.proc.returncode for w in honest] == [0, 0, 0], [w.stderr() for w in honest]
    flipper_peer = next(e for e in flipper.events() if e.get("event") == "start")["peer_id"]
    out = site.shell("import json; from runs.models import StepRecord; from moderation.models import Ban; "
                     f"print(json.dumps({{'validators': {{r.step: r.validators for r in StepRecord.objects.filter("
                     f"run_id={run['run_id']})}}, 'bans': [(b.peer_id, b.evidence_kind) for b in Ban.objects.all()]}}))")
    facts = json.loads(out.strip().splitlines()[-1])
    assert facts["bans"] == [[flipper_peer, "recalc"]]
    recorded = {int(step): v for step, v in facts["validators"].items()}
    assert recorded[0] == {}
    drew = {}  # step -> workers that drew themselves as validators (their 'validator' events)
    for w in honest + [flipper]:
        me = next(e for e in w.events() if e.get("event") == "start")["peer_id"]
        for e in w.events():
            if e.get("event") == "validator":
                drew.setdefault(e["step"], set()).add(me)
    closed = [step for step in drew if step < steps - 1]  # the last step may close after the query
    assert closed and all(set(recorded[step]) == drew[step] for step in closed), (recorded, drew)


def test_the_others_go_on_when_an_honest_worker_is_killed_mid_step(site):
    run = site.create_run(volunteers=4, **(RUN_FIELDS | dict(min_peers=99, phase_timeout=12.0, step_timeout=20.0)))
    site.start()
    tokens = [t["token"] for t in run["tokens"]]
    steps = 4
    workers = [site.start_worker(f"w{i}", tokens[i], max_steps=steps) for i in range(4)]
    victim, survivors = workers[3], workers[:3]
    # once all four are ready three peers are enough: the run goes on without the victim, and the
    # step the victim never reports closes at step_timeout
    site.start_when_ready(workers, min_peers=3)
    site.wait(lambda: any(e.get("event") == "step" and e.get("step") == 1 for e in victim.events()), 60,
              "step 1 to start")
    kill_group(victim.proc, signal.SIGKILL)  # the worker and its p2pd, mid-step
    site.wait(lambda: all(w.proc.poll() is not None for w in survivors), 150, "the survivors to finish")
    assert [w.proc.returncode for w in survivors] == [0, 0, 0], [w.stderr() for w in survivors]
    outcomes = {w.name: [e["outcome"] for e in w.steps_done()] for w in survivors}
    assert all(len(o) == steps for o in outcomes.values()), outcomes
    assert all(o[-1] == "applied" for o in outcomes.values()), outcomes  # training went on
    final = steps - 1
    assert len({last_hash_at(w, final) for w in survivors}) == 1
    peers = {p["account"]: p for p in site.api(f"/api/runs/{run['run_id']}/")["peers"]}
    assert peers["volunteer4"]["online"] is False and peers["volunteer4"]["status"] == "offline"
    # nobody who stayed is banned. A crash after the MPRNG commitment counts as a withheld reveal, which
    # the spec bans; as a crash looks the same, that bans the crashed worker key only, never the account
    bans = site.api("/api/bans/")["bans"]
    assert not {b["account"] for b in bans} & {"volunteer1", "volunteer2", "volunteer3"}
    assert all(b["scope"] == "key" for b in bans if b["account"] == "volunteer4"), bans

    # a token the site does not know: a clear message and exit code 3, no retry loop
    stranger = site.start_worker("stranger", "btard_nope_0000000000000000", max_steps=1)
    site.wait(lambda: stranger.proc.poll() is not None, 60, "the worker with a bad token to exit")
    assert stranger.proc.returncode == 3
    fatal = [e for e in stranger.events() if e.get("event") == "fatal"]
    assert fatal and "token" in fatal[0]["message"]


def test_a_worker_whose_randomness_commitment_arrives_late_is_left_out_of_it_and_nobody_is_banned(site):
    """A slow link, not an attack: the site closes the MPRNG commitments at the group's deadline, every
    peer leaves the latecomer's value out alike, and its gradient still counts."""
    run = site.create_run(volunteers=4, **(RUN_FIELDS | dict(min_peers=99, step_timeout=60.0)))
    site.start()
    tokens = [t["token"] for t in run["tokens"]]
    steps, timeout = 2, 6.0
    workers = [site.start_worker(f"w{i}", tokens[i], max_steps=steps, phase_timeout=timeout) for i in range(3)]
    slow = site.start_worker("slow", tokens[3], max_steps=steps, phase_timeout=timeout,
                             hold={"mprng_commit": timeout + 4})
    workers.append(slow)
    site.start_when_ready(workers, min_peers=4)
    site.wait(lambda: all(w.proc.poll() is not None for w in workers), 150, "the workers to finish")
    assert [w.proc.returncode for w in workers] == [0, 0, 0, 0], [w.stderr() for w in workers]
    outcomes = {w.name: [e["outcome"] for e in w.steps_done()] for w in workers}
    assert all(o == ["applied"] * steps for o in outcomes.values()), outcomes
    assert len({last_hash_at(w, steps - 1) for w in workers}) == 1
    # the slow worker was told, each step, with the reason
    assert sorted(e["step"] for e in slow.events() if e.get("event") == "late") == list(range(steps))
    assert site.api("/api/bans/")["bans"] == []


def test_a_newcomer_downloads_the_state_passes_probation_and_joins_the_group(site):
    run = site.create_run(volunteers=4, policy="reputation", probation_steps=2, max_new_per_window=100,
                          max_candidate_fraction=1.0, peers_per_group=8, min_peers=99, **RUN_FIELDS)
    site.start()
    tokens = [t["token"] for t in run["tokens"]]
    founders = [site.start_worker(f"w{i}", tokens[i], max_steps=40) for i in range(3)]
    site.start_when_ready(founders, min_peers=3)
    site.wait(lambda: any(e.get("event") == "step" for e in founders[0].events()), 120, "the run to start")
    newcomer = site.start_worker("newcomer", tokens[3], max_steps=2)
    site.wait(lambda: newcomer.proc.poll() is not None, 200, "the newcomer to finish two steps in the group")
    assert newcomer.proc.returncode == 0, newcomer.stderr()
    events = newcomer.events()
    kinds = [e.get("event") for e in events]
    downloads = [e for e in events if e.get("event") == "state"]
    donors = [int(e["message"].split(" from ")[1].split()[0]) for e in downloads]
    assert donors and min(donors) >= 2  # every download used several donors, not one
    assert "promoted" in kinds
    assert kinds.index("state") < kinds.index("promoted")
    welcome = next(e for e in events if e.get("event") == "welcome")
    assert "candidate" in welcome["message"]
    done = newcomer.steps_done()
    assert done and done[-1]["outcome"] == "applied"
    # in the group it computes exactly what the founders compute
    for event in done:
        founder_hashes = {last_hash_at(w, event["step"]) for w in founders} - {None}
        assert founder_hashes == {event["params_sha256"]}

    # doctor, against the real site while the founders are active: one of them dials our address
    doctor = site.run_doctor(tokens[3], config_dir=site.workdir / "cfg-newcomer")
    checks = {c["name"]: c for c in doctor["checks"]}
    assert checks["site"]["result"] == "ok" and checks["token"]["result"] == "ok"
    assert checks["hivemind"]["result"] == "ok"
    assert checks["reachability"]["result"] == "ok", checks["reachability"]
    for w in founders:
        kill_group(w.proc, signal.SIGTERM)
