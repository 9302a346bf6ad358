"""What carries a protocol peer's :class:`~worker_client.btard.actions.Action` objects out."""
