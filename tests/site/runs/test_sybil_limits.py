"""F8 (site security review): Sybil limits per account and per address: live tokens per account, tokens
issued per address, keys and founders per account in a run; the client address taken from
``X-Forwarded-For`` only behind a configured trusted proxy (per Django's documented practice)."""

from __future__ import annotations

import pytest
from btard_site.security import client_address
from channels.db import database_sync_to_async
from django.test import RequestFactory
from runs.models import Peer
from volunteers import services as volunteers
from volunteers.models import WorkerToken

from tests.factories import RunFactory
from tests.site.wsclient import join, open_worker, receive_type, send, token_for

pytestmark = pytest.mark.django_db


def test_an_account_holds_at_most_its_share_of_live_tokens(alice, client, settings):
    settings.MAX_LIVE_TOKENS_PER_ACCOUNT = 3
    client.force_login(alice)
    for i in range(3):
        assert client.post("/tokens/", {"name": f"t{i}"}).status_code == 201
    response = client.post("/tokens/", {"name": "one too many"})
    assert response.status_code == 429 and b"at most 3 live worker tokens" in response.content
    assert WorkerToken.objects.filter(user=alice, revoked_at=None).count() == 3
    token = WorkerToken.objects.filter(user=alice).first()
    client.post(f"/tokens/{token.pk}/revoke/")
    assert client.post("/tokens/", {"name": "replacement"}).status_code == 201


def test_tokens_issued_from_one_address_are_limited_across_accounts(client, settings):
    from tests.factories import UserFactory

    settings.TOKENS_PER_ADDRESS_PER_HOUR = 4
    statuses = []
    for i in range(3):
        client.force_login(UserFactory(username=f"sybil{i}"))
        statuses += [client.post("/tokens/", {"name": "x"}).status_code for _ in range(2)]
    assert statuses.count(201) == 4 and statuses.count(429) == 2


@pytest.mark.parametrize("remote, forwarded, trusted, expected", [
    ("198.51.100.9", "203.0.113.5", [], "198.51.100.9"),                    # no proxy configured: ignored
    ("10.0.0.2", "203.0.113.5", ["10.0.0.0/8"], "203.0.113.5"),             # the proxy's view of the client
    ("10.0.0.2", "6.6.6.6, 203.0.113.5", ["10.0.0.2"], "203.0.113.5"),      # left entries are the client's claims
    ("10.0.0.2", "203.0.113.5, 10.0.0.3", ["10.0.0.0/8"], "203.0.113.5"),   # a chain of trusted proxies
    ("198.51.100.9", "203.0.113.5", ["10.0.0.0/8"], "198.51.100.9"),        # not from the proxy: ignored
    ("10.0.0.2", "garbage", ["10.0.0.0/8"], "10.0.0.2"),
])
def test_the_client_address_is_read_from_a_trusted_proxy_only(settings, remote, forwarded, trusted, expected):
    settings.TRUSTED_PROXIES = trusted
    request = RequestFactory().get("/", REMOTE_ADDR=remote, HTTP_X_FORWARDED_FOR=forwarded)
    assert client_address(request) == expected


def test_sign_ups_behind_the_proxy_are_limited_per_real_client(client, settings):
    settings.TRUSTED_PROXIES = ["10.0.0.1"]
    settings.SIGNUP_LIMIT_PER_ADDRESS = 1

    def sign_up(name, address):
        return client.post("/signup/", {"username": name, "email": f"{name}@example.org",
                                        "password1": "a quiet meadow 42", "password2": "a quiet meadow 42"},
                           REMOTE_ADDR="10.0.0.1", HTTP_X_FORWARDED_FOR=address).status_code

    assert sign_up("first", "203.0.113.1") == 302
    client.logout()
    assert sign_up("second", "203.0.113.2") == 302  # another client behind the same proxy
    client.logout()
    assert sign_up("third", "203.0.113.1") == 429


def test_the_trusted_proxy_setting_refuses_a_bad_entry(monkeypatch):
    from btard_site.env import env_networks
    from django.core.exceptions import ImproperlyConfigured

    monkeypatch.setenv("BTARD_TRUSTED_PROXIES", "10.0.0.1, not-an-ip")
    with pytest.raises(ImproperlyConfigured, match="not-an-ip"):
        env_networks("BTARD_TRUSTED_PROXIES", [])


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_an_account_gets_a_few_keys_and_one_founder_per_run(alice, bob, settings):
    settings.MAX_KEYS_PER_ACCOUNT_PER_RUN = 2
    run = await database_sync_to_async(RunFactory)(name="sybil-run", min_peers=99, peers_per_group=8)
    raw = await database_sync_to_async(token_for)(alice)
    first = await join(raw, b"alice-k1")
    assert first[2]["role"] == "active"
    second = await join(await database_sync_to_async(token_for)(alice, "second"), b"alice-k2")
    assert second[2]["role"] != "active"  # one founder per account
    third = await open_worker(await database_sync_to_async(token_for)(alice, "third"))
    from btard_wire.envelope import Identity
    from tests.site.wsclient import challenge_of, hello_for

    challenge = await challenge_of(third)
    await send(third, hello_for(Identity.from_seed(b"alice-k3"), challenge))
    assert (await receive_type(third, "error"))["code"] == "key_limit"
    assert await database_sync_to_async(Peer.objects.filter(run=run, user=alice).count)() == 2
    founder = await join(bob, b"bob-k1")
    assert founder[2]["role"] == "active"
    for comm in (first[0], second[0], third, founder[0]):
        await comm.disconnect()


_ = volunteers


def test_an_account_holds_one_probation_slot_at_a_time_so_a_newcomer_is_not_queued_behind_it(settings):
    from runs import services as runs
    from runs.models import Run

    from btard_wire.control import Hello
    from btard_wire.envelope import Identity
    from tests.factories import UserFactory, make_peer

    settings.MAX_KEYS_PER_ACCOUNT_PER_RUN = 2
    run = RunFactory(name="fair-run", max_new_per_window=2, max_candidate_fraction=1.0, peers_per_group=16)
    for i in range(4):
        make_peer(run=run, seed=f"fair-active-{i}")
    Run.objects.filter(pk=run.pk).update(current_step=3)
    run.refresh_from_db()

    def join_as(user, seed):
        token = volunteers.create_worker_token(user=user, name=seed).token
        hello = Hello(public_key=Identity.from_seed(seed.encode()).public_key_b64)
        return runs.join_run(token=token, hello=hello).role

    sybil, honest = UserFactory(username="sybil"), UserFactory(username="newcomer")
    assert join_as(sybil, "s1") == "candidate"
    assert join_as(sybil, "s2") == "waiting"  # a second probation slot for the same account: no
    assert join_as(honest, "h1") == "candidate"  # the newcomer gets the window's other slot
    assert runs.admit_waiting_peers(run=run) == []  # and sybil's waiting key stays behind its candidate
