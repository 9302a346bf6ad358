from celery import shared_task

from . import services


@shared_task(name="volunteers.recompute_reputation")
def recompute_reputation() -> int:
    """Re-derive every account's reputation and contribution from its history; returns fixes made."""
    return services.recompute_reputation()
