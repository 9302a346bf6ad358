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


def make_peer(*, run, user=None, seed: str | None = None, role: str = "active", online: bool = True, **kw):
    """A peer plus its identity: ``peer, identity = make_peer(run=run)``."""
    from django.utils import timezone
    from runs.models import Peer

    user = user or UserFactory()
    identity = Identity.from_seed((seed or f"{user.username}-{run.pk}-{Peer.objects.count()}").encode())
    peer = Peer.objects.create(run=run, user=user, peer_id=identity.peer_id, public_key=identity.public_key_b64,
                               role=role, online=online, last_heartbeat=timezone.now(), **kw)
    return peer, identity
