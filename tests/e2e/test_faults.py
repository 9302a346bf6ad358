"""Faults across hosts: workers in their own network namespaces on a bridge (rate-capped links), the site on
the host with PostgreSQL and Redis. Each scenario asserts that the run keeps applying steps, that no honest
peer is banned, and that nothing the site accepted is lost; recovery times go to ``var/e2e-recovery.jsonl``
(docs/performance.md, "Faults across hosts").

Marked ``e2e``: ``make test`` leaves them out, ``make test-e2e`` runs them, CI (``.ci/run``) does not run them yet (see there).
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.support import kill_group

from .harness import NetSite, applied_steps, params_at, seconds_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

# short deadlines so a step that lost a peer ends quickly (the step deadline is at least the sum of the phase
# deadlines: 10 phases x 5 s); no validators (recalculation is not the point)
FIELDS = dict(phase_timeout=5.0, step_timeout=25.0, batch_size=16, validators_per_step=0, epoch_steps=1,
              min_peers=99)


# Each test stops its workers itself; --max-steps must never end one mid-test. With 80, two workers left alone
# while the others' Daphne was down and their reconnect backoff ran (up to 45 s then) could finish their 80
# steps at about 1.2 steps a second here, faster on a quieter machine, and exit: the next wait for "every worker
# applies a step" then ran out ("not within 300 s").
MAX_STEPS = 100_000


def _ready(site, workers, min_peers):
    site.start_when_ready(workers, min_peers=min_peers)


def _bans(site):
    return site.api("/api/bans/")["bans"]


def _credits(site, run_id) -> dict[str, int]:
    return {p["account"]: p.get("samples", 0) for p in site.api(f"/api/runs/{run_id}/")["peers"]}


def _step(site, run_id) -> int:
    return site.api(f"/api/runs/{run_id}/")["step"]


def _wait_step(site, run_id, beyond: int, timeout: float) -> float:
    return seconds_until(lambda: _step(site, run_id) > beyond, timeout, site=site)


@pytest.fixture
def netsite(postgres_url, redis_url, tmp_path, network):
    with NetSite(postgres_url, redis_url, tmp_path, network) as site:
        yield site


def test_the_run_goes_on_through_a_killed_worker_and_cut_links(netsite, network, record_recovery):
    site = netsite
    run = site.create_run(volunteers=5, **FIELDS)
    site.start()
    tokens = [t["token"] for t in run["tokens"]]
    hosts = [network.add_host(rate="100mbit") for _ in range(5)]
    workers = [site.start_worker_on(h, f"w{i}", tokens[i], max_steps=MAX_STEPS) for i, h in enumerate(hosts)]
    _ready(site, workers, min_peers=3)
    rid = run["run_id"]
    _wait_step(site, rid, 1, 180)

    # 1. a 10 s link cut: the host comes back and trains again
    flaky, flaky_host = workers[4], hosts[4]
    before = len(applied_steps(flaky))
    network.cut(flaky_host)
    time.sleep(10)
    network.restore(flaky_host)
    at = _step(site, rid)
    record_recovery("link cut 10 s: next step applied by the swarm", _wait_step(site, rid, at, 120))
    record_recovery("link cut 10 s: the cut host applies a step again",
                    seconds_until(lambda: len(applied_steps(flaky)) > before, 240, site=site))

    # 2. kill -9 mid-phase (worker and its p2p daemon)
    victim = workers[3]
    seconds_until(lambda: any(e.get("event") == "step" and e["step"] > at for e in victim.events()), 60, site=site)
    kill_group(victim.proc, signal.SIGKILL)
    at = _step(site, rid)
    record_recovery("kill -9 mid-step: next step applied", _wait_step(site, rid, at, 120))

    # 3. a link cut for good
    gone = workers[2]
    network.cut(hosts[2])
    at = _step(site, rid)
    record_recovery("link cut for good: next step applied", _wait_step(site, rid, at + 1, 180))

    survivors = [workers[0], workers[1], flaky]
    last = max(applied_steps(workers[0]))
    seconds_until(lambda: all(params_at(w, last) for w in survivors), 60, site=site)
    assert len({params_at(w, last) for w in survivors}) == 1  # the survivors agree bit for bit
    assert all(w.proc.poll() is None for w in survivors), [w.stderr() for w in survivors]
    bans = _bans(site)
    # nobody who was never cut or killed for good is banned (the 10 s cut is silence for the steps it missed,
    # a reveal that missed the close included: issue 13); a peer gone for good is banned at most by key
    # (silence), never its account
    faulted = {"volunteer3", "volunteer4"}
    assert not {b["account"] for b in bans} - faulted, bans
    assert all(b["scope"] == "key" for b in bans), bans
    for w in (*survivors, gone):
        kill_group(w.proc, signal.SIGTERM)


def _members_apply(site, rid, workers, count: int, timeout: float) -> float:
    """Seconds until each of ``workers`` applied ``count`` more steps than now."""
    base = {w.name: len(applied_steps(w)) for w in workers}
    return seconds_until(lambda: all(len(applied_steps(w)) >= base[w.name] + count for w in workers), timeout,
                         site=site)


def _assert_no_bans_and_agreement(site, workers):
    assert _bans(site) == []
    last = min(max(applied_steps(w)) for w in workers)
    seconds_until(lambda: all(params_at(w, last) for w in workers), 60, site=site)
    assert len({params_at(w, last) for w in workers}) == 1


def test_the_run_goes_on_through_daphne_restarts_and_a_lost_site_process(netsite, network, record_recovery):
    site = netsite
    run = site.create_run(volunteers=4, **FIELDS)
    rid = run["run_id"]
    url_a = site.start()
    port_b = site.second_port()
    url_b = site.start(port=port_b)
    tokens = [t["token"] for t in run["tokens"]]
    hosts = [network.add_host(rate="100mbit") for _ in range(4)]
    # two Daphne processes behind the same Redis and database, two workers on each
    workers = [site.start_worker_on(h, f"w{i}", tokens[i], max_steps=MAX_STEPS, server=url_a if i < 2 else url_b)
               for i, h in enumerate(hosts)]
    _ready(site, workers, min_peers=2)
    _wait_step(site, rid, 1, 180)
    record_recovery("baseline: every worker applies a step", _members_apply(site, rid, workers, 1, 120))

    # 1. one of the two site processes dies for good: its workers reconnect-loop, the others go on
    site.kill_daphne(port_b)
    record_recovery("one of two Daphne processes killed: the other's workers apply a step",
                    _members_apply(site, rid, workers[:2], 1, 180))
    # ... and comes back on the same address: its workers rejoin and train again
    site.start(port=port_b)
    record_recovery("killed Daphne restarted: its workers apply a step again",
                    _members_apply(site, rid, workers[2:], 1, 300))

    # 2. the first Daphne restarted mid-step
    seconds_until(lambda: site.api(f"/api/runs/{rid}/")["step_in_progress"], 60, site=site)
    site.kill_daphne()
    site.start()
    record_recovery("Daphne restarted mid-step: every worker applies a step", _members_apply(site, rid, workers, 1, 300))

    assert all(w.proc.poll() is None for w in workers), [w.stderr() for w in workers]
    _assert_no_bans_and_agreement(site, workers)
    for w in workers:
        kill_group(w.proc, signal.SIGTERM)


def test_the_run_goes_on_through_redis_and_postgres_restarts_and_loses_nothing(private_services, tmp_path, network,
                                                                              record_recovery):
    pg, redis = private_services
    with NetSite(pg.url, redis.url, tmp_path, network) as site:
        run = site.create_run(volunteers=4, **(FIELDS | dict(checkpoint_every=2)))
        rid = run["run_id"]
        site.start()
        tokens = [t["token"] for t in run["tokens"]]
        hosts = [network.add_host(rate="100mbit") for _ in range(4)]
        workers = [site.start_worker_on(h, f"w{i}", tokens[i], max_steps=MAX_STEPS) for i, h in enumerate(hosts)]
        _ready(site, workers, min_peers=3)
        _wait_step(site, rid, 2, 180)
        record_recovery("baseline: every worker applies a step", _members_apply(site, rid, workers, 1, 120))

        def accepted():
            state = site.api(f"/api/runs/{rid}/")
            return state["step"], {p["account"]: p.get("credit", p.get("samples")) for p in state["peers"]}

        step_before, _ = accepted()
        redis.restart()
        record_recovery("Redis restarted: every worker applies a step", _members_apply(site, rid, workers, 1, 240))
        pg.restart()
        record_recovery("PostgreSQL restarted: every worker applies a step",
                        _members_apply(site, rid, workers, 1, 240))
        step_after, _ = accepted()
        assert step_after > step_before
        # what was accepted before the restarts is still there: tokens (the workers reconnect with them), every
        # step record, the checkpoint
        state = site.api(f"/api/runs/{rid}/")
        assert state["checkpoint"] is not None
        count = site.shell(f"from runs.models import StepRecord; print(StepRecord.objects.filter(run_id={rid}).count())")
        assert int(count.strip().splitlines()[-1]) >= step_after
        assert all(w.proc.poll() is None for w in workers), [w.stderr() for w in workers]
        _assert_no_bans_and_agreement(site, workers)
        for w in workers:
            kill_group(w.proc, signal.SIGTERM)


def test_a_slow_host_is_left_out_of_steps_not_banned_and_told_why(netsite, network, record_recovery):
    site = netsite
    # gpt-char-small: 0.44M parameters, so a part of each gradient takes seconds at 1 Mbit/s
    # an ELIMINATE benches the pair for the epoch (10 steps); three fast peers are enough to go on without it
    run = site.create_run(volunteers=5, **(FIELDS | dict(task="gpt-char-small", phase_timeout=4.0,
                                                          step_timeout=15.0, epoch_steps=10)))
    rid = run["run_id"]
    site.start()
    tokens = [t["token"] for t in run["tokens"]]
    fast = [site.start_worker_on(network.add_host(rate="1000mbit"), f"fast{i}", tokens[i], max_steps=MAX_STEPS)
            for i in range(4)]
    slow_host = network.add_host(rate="1000mbit")
    slow = site.start_worker_on(slow_host, "slow", tokens[4], max_steps=MAX_STEPS)
    _ready(site, fast + [slow], min_peers=3)
    _wait_step(site, rid, 1, 180)
    network.set_rate(slow_host, "1mbit")
    base = {w.name: len(applied_steps(w)) for w in fast}
    at = _step(site, rid)
    # the slow host and the peer it failed are benched; the remaining fast hosts keep applying steps
    record_recovery("a host slowed to 1 Mbit/s: three fast hosts apply 3 steps",
                    seconds_until(lambda: sum(len(applied_steps(w)) >= 3 + base[w.name] for w in fast) >= 3, 240,
                                  site=site))
    assert _step(site, rid) > at
    assert _bans(site) == []  # slow is not a fault
    told = [e for e in slow.events() if e.get("event") in ("late", "eliminated", "left_out", "excluded")]
    assert told and all(e.get("message") for e in told), [
        (e.get("event"), e.get("message")) for e in slow.events() if e.get("event") != "status"][-30:]
    for w in (*fast, slow):
        kill_group(w.proc, signal.SIGTERM)
