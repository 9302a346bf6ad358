"""factory_boy factories for the site's apps (no database dumps)."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from btard_wire.envelope import Identity


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"volunteer{n}")
    email = factory.LazyAttribute(lambda o: f"{o.username}@example.org")
    password = factory.django.Password("correct horse battery")

    @factory.post_generation
    def volunteer(obj, create, extracted, **kwargs):
        if create:
            from volunteers.models import Volunteer

            Volunteer.objects.get_or_create(user=obj)


class RunFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = "runs.Run"

    name = factory.Sequence(lambda n: f"run-{n}")
    task = "digits-mlp"
    peers_per_group = 4
    min_peers = 2
    probation_steps = 2
    step_timeout = 60.0


class PeerFactory(factory.django.DjangoModelFactory):
    """A peer of a run with a real key: ``PeerFactory(run=run, seed="a")``; its identity (to sign with) is
    ``peer.identity`` (not stored). The key comes from ``seed`` (default: account, run and a counter)."""

    class Meta:
        model = "runs.Peer"
        exclude = ("seed",)

    run = factory.SubFactory(RunFactory)
    user = factory.SubFactory(UserFactory)
    seed = None
    identity = factory.LazyAttribute(lambda o: Identity.from_seed(
        (o.seed or f"{o.user.username}-{o.run.pk}-{_peer_count()}").encode()))
    peer_id = factory.LazyAttribute(lambda o: o.identity.peer_id)
    public_key = factory.LazyAttribute(lambda o: o.identity.public_key_b64)
    role = "active"
    online = True
    last_heartbeat = factory.LazyFunction(lambda: _now())

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        identity = kwargs.pop("identity")
        peer = super()._create(model_class, *args, **kwargs)
        peer.identity = identity
        return peer


def _peer_count() -> int:
    from runs.models import Peer

    return Peer.objects.count()


def _now():
    from django.utils import timezone

    return timezone.now()


def make_peer(*, run, user=None, seed: str | None = None, role: str = "active", online: bool = True, **kw):
    """A peer plus its identity: ``peer, identity = make_peer(run=run)`` (a :class:`PeerFactory`)."""
    peer = PeerFactory(run=run, user=user or UserFactory(), seed=seed, role=role, online=online, **kw)
    return peer, peer.identity


class StepRecordFactory(factory.django.DjangoModelFactory):
    """A step of a run; by default a finished, applied step with no members (the curve and deadlines)."""

    class Meta:
        model = "runs.StepRecord"

    run = factory.SubFactory(RunFactory)
    step = factory.Sequence(lambda n: n)
    members = factory.LazyFunction(list)
    deadline = factory.LazyFunction(lambda: _now())
    outcome = "applied"
    finished_at = factory.LazyFunction(lambda: _now())


class WorkerTokenFactory(factory.django.DjangoModelFactory):
    """A worker token row; its raw secret is ``token.raw`` (not stored, only its hash)."""

    class Meta:
        model = "volunteers.WorkerToken"

    user = factory.SubFactory(UserFactory)
    name = factory.Sequence(lambda n: f"token-{n}")
    prefix = factory.Sequence(lambda n: f"{n:08x}")
    raw = factory.LazyAttribute(lambda o: f"btard_{o.prefix}_{'s' * 32}")
    token_hash = factory.LazyAttribute(lambda o: _hash_token(o.raw))

    @classmethod
    def _create(cls, model_class, *args, **kwargs):
        raw = kwargs.pop("raw")
        token = super()._create(model_class, *args, **kwargs)
        token.raw = raw
        return token


def _hash_token(raw: str) -> str:
    from volunteers.services import hash_token

    return hash_token(raw)


class BanFactory(factory.django.DjangoModelFactory):
    """An active ban of ``run_peer`` (its key, account and run), as ``moderation.services.ban_peer`` writes
    one, but without its side effects (no event, the peer's role and the account are not touched)."""

    class Meta:
        model = "moderation.Ban"

    run_peer = factory.SubFactory(PeerFactory)
    run = factory.LazyAttribute(lambda o: o.run_peer.run)
    user = factory.LazyAttribute(lambda o: o.run_peer.user)
    peer_id = factory.LazyAttribute(lambda o: o.run_peer.peer_id)
    step = 0
    reason = "part does not match its commitment"
    evidence_kind = "bad_commitment"
    evidence = factory.LazyFunction(dict)
    source = "verdict"
    scope = "account"


class ModerationCaseFactory(factory.django.DjangoModelFactory):
    """An open case of a run about ``peers`` (a list of peers, set after creation)."""

    class Meta:
        model = "moderation.ModerationCase"

    run = factory.SubFactory(RunFactory)
    kind = "eliminate"
    step = 0
    summary = factory.Sequence(lambda n: f"case {n}")
    evidence = factory.LazyFunction(dict)

    @factory.post_generation
    def peers(obj, create, extracted, **kwargs):
        if create and extracted:
            obj.peers.set(extracted)
