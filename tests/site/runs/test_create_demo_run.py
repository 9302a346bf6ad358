"""``create_demo_run`` pins the run's task from installed metadata (no worker code imported by the site)."""

from __future__ import annotations

import json
from importlib import metadata
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from runs.models import Run

pytestmark = pytest.mark.django_db


def _create(*args: str) -> dict:
    out = StringIO()
    call_command("create_demo_run", "--volunteers", "2", "--json", *args, stdout=out)
    return json.loads(out.getvalue())


def test_it_pins_the_package_and_version_that_register_the_task():
    result = _create("--task", "gpt-char-small")
    run = Run.objects.get(pk=result["run_id"])
    ep = next(ep for ep in metadata.entry_points(group="btard_swarm.tasks") if ep.name == "gpt-char-small")
    assert run.extra["task_package"] == ep.dist.metadata["Name"]
    assert run.extra["task_version"] == ep.dist.version
    assert "data_sha256" not in run.extra  # only the task's code can hash its data
    assert (run.lr, run.batch_size) == (2e-3, 32)  # the catalog's defaults for the task, not the SGD tasks'


def test_it_records_the_data_hash_the_worker_side_hands_it():
    result = _create("--task", "gpt-char-small", "--task-extra", json.dumps({"data_sha256": "ab" * 32}))
    assert Run.objects.get(pk=result["run_id"]).extra["data_sha256"] == "ab" * 32
    assert result["extra"]["data_sha256"] == "ab" * 32


def test_it_pins_nothing_for_a_task_no_installed_package_registers():
    result = _create("--task", "no-such-task")
    assert Run.objects.get(pk=result["run_id"]).extra == {}


@pytest.mark.parametrize("bad", ["{not json", "[1]", json.dumps({"data_sha256": 3}), json.dumps({"evil": "x"})])
def test_it_refuses_a_malformed_task_extra_with_a_sentence(bad):
    with pytest.raises(CommandError, match="--task-extra"):
        _create("--task-extra", bad)
    assert Run.objects.count() == 0
