from django.db import migrations, models


class Migration(migrations.Migration):
    """When a key last (re)joined and its last excused silent step: a restarted worker's catch-up silence is
    excused once in a while (btard_wire.board.silence_excused; the soak's finding)."""

    dependencies = [("runs", "0008_step_departures")]

    operations = [
        migrations.AddField(model_name="peer", name="rejoined_step", field=models.IntegerField(blank=True, null=True)),
        migrations.AddField(model_name="peer", name="silence_excused_step",
                            field=models.IntegerField(blank=True, null=True)),
    ]
