"""live.event_routing: the one table of where each live event goes."""

import typing

import pytest
from live import event_routing as routes
from live import events as ev

from btard_wire.control import Group, PeerInfo
from btard_wire.control import PhaseClosed as PhaseClosedMessage


def _event_types():
    union = typing.get_args(ev.LiveEvent)[0]
    return typing.get_args(union)


def test_it_routes_every_event_type_of_the_schema():
    types = _event_types()
    assert len(types) > 20
    assert set(types) == set(routes.LIVE_GROUPS)


def test_it_refuses_an_event_type_without_a_route():
    class Stray(ev._Event):
        type: typing.Literal["stray"] = "stray"

    with pytest.raises(TypeError, match="no live route for event Stray"):
        routes.live_groups(Stray())


def test_it_sends_a_formed_group_to_its_members_and_candidates_as_the_workers_group_message():
    peers = [PeerInfo(peer_id=p, public_key="k") for p in ("a", "b")]
    group = Group(step=4, peers=peers, candidates=[{"peer_id": "c", "seed": 1, "validator": "a"}])
    event = ev.GroupFormed(run_id=7, group=group)
    assert event.step == 4
    assert routes.worker_message(event) == group
    assert routes.worker_recipients(event) == ["a", "b", "c"]
    assert routes.live_groups(event) == [routes.run_live_group(7)]


def test_it_relays_a_broadcast_and_a_phase_close_to_the_step_only():
    closed = ev.PhaseClosed(run_id=7, step=2, phase="commit", senders=["a"], late=["b"], recipients=["a", "b"])
    assert routes.worker_message(closed) == PhaseClosedMessage(step=2, phase="commit", senders=["a"])
    assert routes.worker_recipients(closed) == ["a", "b"]
    assert routes.live_groups(closed) == []


def test_it_gives_no_worker_message_for_page_only_events():
    event = ev.StepReported(run_id=1, step=0, peer_id="a", reported=1, expected=2)
    assert routes.worker_message(event) is None and routes.worker_recipients(event) == []


def test_it_sends_moderation_cases_to_no_group_that_nobody_joins():
    opened = ev.CaseOpened(case_id=1, run_id=3, kind="crash", peer_ids=["a"])
    resolved = ev.CaseResolved(case_id=1, run_id=3, action="cleared", reason="ok")
    assert routes.live_groups(opened) == [routes.run_live_group(3)]
    assert routes.live_groups(resolved) == []
    assert not hasattr(routes, "moderation_group")
