"""``python -m worker_client.sim``: the same as ``btard-sim``."""

from .cli import main

raise SystemExit(main())
