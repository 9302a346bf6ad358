import asyncio
import uuid

import pytest
from btard_site.tasks import ping
from channels.layers import get_channel_layer
from django.test import override_settings


def test_the_channel_layer_round_trips_a_message_through_redis(redis_url, settings):
    settings.CHANNEL_LAYERS = {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [redis_url]}}
    }
    from channels.layers import channel_layers

    channel_layers.backends.pop("default", None)
    layer = get_channel_layer()
    assert type(layer).__name__ == "RedisChannelLayer"

    async def roundtrip():
        channel = await layer.new_channel()
        group = f"test-{uuid.uuid4().hex}"
        await layer.group_add(group, channel)
        await layer.group_send(group, {"type": "hello", "value": 42})
        message = await asyncio.wait_for(layer.receive(channel), timeout=5)
        await layer.group_discard(group, channel)
        return message

    try:
        assert asyncio.run(roundtrip()) == {"type": "hello", "value": 42}
    finally:
        channel_layers.backends.pop("default", None)


def test_a_celery_task_runs_in_process_by_default():
    with override_settings(CELERY_TASK_ALWAYS_EAGER=True):
        from btard_site.celery import app

        app.conf.task_always_eager = True
        assert ping.delay(41).get(timeout=5) == 42


def _forget_result_backend(app):
    # Celery caches its broker connections and its result backend (per thread) from the configuration of
    # their first use, which an earlier test may have made with the settings' Redis database; this test points
    # the app at the run's own one
    app.close()
    vars(app).pop("amqp", None)  # a cached property holding the producer pool
    app._backend_cache = None
    vars(app._local).pop("backend", None)


def test_a_celery_task_runs_on_a_real_worker_through_redis(redis_url):
    from btard_site.celery import app
    from celery.contrib.testing.worker import start_worker

    old = dict(app.conf)
    app.conf.update(
        broker_url=redis_url, result_backend=redis_url, task_always_eager=False,
        task_default_queue=f"test-{uuid.uuid4().hex[:8]}",
    )
    _forget_result_backend(app)
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            result = ping.apply_async((1,), queue=app.conf.task_default_queue)
            assert result.get(timeout=20) == 2
    finally:
        app.conf.update({k: old[k] for k in ("broker_url", "result_backend", "task_always_eager",
                                              "task_default_queue")})
        _forget_result_backend(app)


@pytest.mark.django_db
def test_the_home_page_and_health_check_answer(client):
    assert client.get("/").status_code == 200
    body = client.get("/healthz").json()
    assert body["ok"] is True
