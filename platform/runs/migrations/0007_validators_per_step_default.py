from django.db import migrations, models


class Migration(migrations.Migration):
    """Two validators per step by default, as in the protocol core (security review, finding 3)."""

    dependencies = [("runs", "0006_phase_closes")]

    operations = [
        migrations.AlterField(model_name="run", name="validators_per_step",
                              field=models.PositiveIntegerField(default=2)),
    ]
