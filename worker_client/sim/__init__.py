"""``btard-sim``: simulate a swarm on one machine, honest and Byzantine peers, BTARD or a baseline rule.

    btard-sim --task mnist5k-mlp --peers 16 --byzantine 7 --attack alie --attack-start 50 \\
              --aggregator btard --steps 300 --seed 0 --json out.json

``--aggregator btard`` runs the full protocol (:mod:`worker_client.btard`) over the in-memory transport
(:mod:`worker_client.transports.memory`) in the worker's mode: signed broadcasts through a bulletin board
that echoes them, closes the board phases and bans by the site's rules (:mod:`btard_wire.board`), parts
and aggregates as raw float32 bytes, the site's group order, and probation for peers that join later
(``--joiners``). Any name from :data:`~worker_client.btard.aggregators.AGGREGATORS` instead runs plain
data-parallel SGD with that rule on a trusted server (no verification, no validation, no bans), with the
same seeds and attackers, for comparison; every rule that takes ``f`` is told the true number of
attackers. ``--aggregator kardam`` runs Kardam's asynchronous parameter server with delayed workers
(``--staleness``); ``--non-iid ALPHA`` gives every peer a label-skewed shard.

- :mod:`.run`        :func:`run_simulation` (the Python entry point: tests, ``btard-experiments``) and the
  BTARD loop;
- :mod:`.baseline`   the trusted-server baselines and Kardam (:mod:`.kardam`, a baseline only, not the core);
- :mod:`.probation`  candidates joining a running swarm;
- :mod:`.world`      the set-up every loop shares and :class:`~.world.Outcome`, the one type they return;
- :mod:`.models`     model states by version, the gradient cache, non-IID shards;
- :mod:`.cli`        the command line (``btard-sim`` is :func:`main`).
"""

from ..btard.aggregators import AGGREGATORS
from ..btard.attacks import ATTACKS
from ..tasks import compute_gradient  # the seam Models calls through this package (tests replace it)
from .baseline import BASELINE_VERSION, baseline_params, check_baseline
from .cli import build_parser, main
from .models import Models, dirichlet_shards
from .run import MODES, run_simulation, summarise
from .world import RUN, Outcome, World

_Models = Models  # the earlier private name (tests patch its methods)

__all__ = ["AGGREGATORS", "ATTACKS", "BASELINE_VERSION", "MODES", "RUN", "Models", "Outcome", "World",
           "baseline_params", "build_parser", "check_baseline", "compute_gradient", "dirichlet_shards", "main",
           "run_simulation", "summarise"]
