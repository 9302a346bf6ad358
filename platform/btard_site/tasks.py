from celery import shared_task


@shared_task(name="btard_site.ping")
def ping(value: int) -> int:
    """Round-trip task used by health checks and tests: returns value + 1."""
    return value + 1
