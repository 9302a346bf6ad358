from django.db import migrations, models


class Migration(migrations.Migration):
    """When a peer went offline, and the members that left a step: a step closes as soon as it can no longer
    complete (every member reported or left), not at its deadline (issue 13, step recovery)."""

    dependencies = [("runs", "0007_validators_per_step_default")]

    operations = [
        migrations.AddField(model_name="peer", name="left_at", field=models.DateTimeField(blank=True, null=True)),
        migrations.AddField(model_name="steprecord", name="left",
                            field=models.JSONField(blank=True, default=list)),
    ]
