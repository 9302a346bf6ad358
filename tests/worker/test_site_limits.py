"""The worker enforces the limits it shares with the site (btard_wire.limits), no stricter and no looser."""

from __future__ import annotations

import pytest

from btard_wire import limits
from btard_wire.control import Group, PeerInfo, RunInfo
from worker_client.site_limits import SiteValueError, check_group, check_run, clamp_timeout


def run(**fields) -> RunInfo:
    return RunInfo(**({"id": 1, "name": "r", "task": "digits-mlp"} | fields))


@pytest.mark.parametrize("field, at_limit, past_it", [
    ("seed", limits.SEED_RANGE[1] - 1, limits.SEED_RANGE[1]),
    ("seed", limits.SEED_RANGE[0], limits.SEED_RANGE[0] - 1),
    ("batch_size", limits.MAX_BATCH_SIZE, limits.MAX_BATCH_SIZE + 1),
    ("peers_per_group", limits.MAX_PEERS, limits.MAX_PEERS + 1),
    ("probation_steps", limits.MAX_PROBATION_STEPS - 1, limits.MAX_PROBATION_STEPS),
    ("checkpoint_every", limits.MAX_CHECKPOINT_EVERY, limits.MAX_CHECKPOINT_EVERY + 1),
    ("lr", limits.MAX_LR, limits.MAX_LR * 2),
    ("tau", limits.MAX_TAU, limits.MAX_TAU * 2),
    ("name", "n" * limits.MAX_RUN_NAME_CHARS, "n" * (limits.MAX_RUN_NAME_CHARS + 1)),
    ("extra", {"k": "x" * (limits.MAX_EXTRA_BYTES - 16)}, {"k": "x" * limits.MAX_EXTRA_BYTES}),
])
def test_a_run_at_a_shared_limit_is_accepted_and_one_past_it_refused_with_a_sentence(field, at_limit, past_it):
    assert check_run(run(**{field: at_limit}))
    with pytest.raises(SiteValueError):
        check_run(run(**{field: past_it}))


def test_groups_and_deadlines_are_bounded_by_the_shared_limits():
    peer = PeerInfo(peer_id="p" * 40, public_key="k" * 44, p2p_id="", p2p_addrs=["/ip4/1.2.3.4/tcp/1"])
    deadlines = {str(i): 1.0 for i in range(limits.MAX_DEADLINES)}
    assert check_group(Group(step=limits.MAX_STEP - 1, peers=[peer], deadlines=deadlines))
    for bad in (Group(step=limits.MAX_STEP, peers=[peer]),
                Group(step=1, peers=[peer] * (limits.MAX_PEERS + 1)),
                Group(step=1, peers=[peer], deadlines=deadlines | {"one more": 1.0}),
                Group(step=1, peers=[peer.model_copy(update={"p2p_addrs": ["/a" * limits.MAX_ADDR_CHARS]})])):
        with pytest.raises(SiteValueError):
            check_group(bad)
    assert clamp_timeout(0.0) == limits.MIN_PHASE_TIMEOUT and clamp_timeout(1e9) == limits.MAX_PHASE_TIMEOUT
