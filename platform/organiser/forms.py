"""The organiser's run form: every hyper-parameter with its range, defaults from the task catalog."""

from __future__ import annotations

from django import forms
from django.core.validators import RegexValidator

from .catalog import AGGREGATORS, available_tasks, task_info


def _policies():
    from admission.policies import POLICIES

    return [(name, name) for name in sorted(POLICIES)]


class RunCreateForm(forms.Form):
    name = forms.CharField(max_length=100, validators=[RegexValidator(
        r"^[A-Za-z0-9][A-Za-z0-9._-]*$", "letters, digits, dot, dash and underscore; starting with a letter or digit")])
    task = forms.ChoiceField(choices=lambda: [(n, f"{n}: {task_info(n).title}") for n in available_tasks()])
    aggregator = forms.ChoiceField(choices=[(a, a) for a in AGGREGATORS], initial="btard",
                                   help_text="BTARD with CenteredClip (the worker's rule)")
    batch_size = forms.IntegerField(min_value=1, max_value=4096, required=False,
                                    help_text="samples per peer per step; empty: the task's default")
    lr = forms.FloatField(min_value=1e-6, max_value=10.0, required=False, label="Learning rate",
                          help_text="empty: the task's default")
    peers_per_group = forms.IntegerField(min_value=2, max_value=256, initial=8)
    min_peers = forms.IntegerField(min_value=1, max_value=256, initial=2,
                                   help_text="online active peers needed to start a step")
    validators_per_step = forms.IntegerField(min_value=0, max_value=64, initial=2)  # as the model and the core
    tau = forms.FloatField(min_value=1e-6, max_value=1e6, initial=1.0, help_text="CenteredClip radius")
    probation_steps = forms.IntegerField(min_value=0, max_value=1000, initial=5)
    seed = forms.IntegerField(min_value=0, max_value=2**31 - 1, initial=0)
    phase_timeout = forms.FloatField(min_value=1.0, max_value=3600.0, initial=30.0, help_text="seconds per phase")
    step_timeout = forms.FloatField(min_value=5.0, max_value=86400.0, initial=120.0, help_text="seconds per step")
    epoch_steps = forms.IntegerField(min_value=1, max_value=1_000_000, initial=50)
    checkpoint_every = forms.IntegerField(min_value=0, max_value=1_000_000, initial=50,
                                          help_text="steps between checkpoints (0: none)")
    admission_policy = forms.ChoiceField(choices=_policies, initial="reputation")
    max_new_per_window = forms.IntegerField(min_value=0, max_value=10_000, initial=4)
    admission_window_seconds = forms.IntegerField(min_value=1, max_value=86_400 * 7, initial=600)
    max_candidate_fraction = forms.FloatField(min_value=0.01, max_value=1.0, initial=0.25)
    missed_deadlines_for_case = forms.IntegerField(min_value=1, max_value=1000, initial=3)

    def clean(self):
        data = super().clean()
        group, minimum = data.get("peers_per_group"), data.get("min_peers")
        if group is not None and minimum is not None and minimum > group:
            self.add_error("min_peers", f"cannot exceed the group size ({group})")
        validators = data.get("validators_per_step")
        if group is not None and validators is not None and validators >= group:
            self.add_error("validators_per_step", f"must be below the group size ({group})")
        phase, step = data.get("phase_timeout"), data.get("step_timeout")
        if phase is not None and step is not None and step < phase:
            self.add_error("step_timeout", f"must be at least the phase timeout ({phase:g} s)")
        return data

    def hyperparameters(self) -> dict:
        data = dict(self.cleaned_data)
        for key in ("name", "task", "aggregator"):
            data.pop(key)
        return data


class MinVersionForm(forms.Form):
    version = forms.CharField(max_length=32, required=False)


class AnnouncementForm(forms.Form):
    text = forms.CharField(max_length=500)
