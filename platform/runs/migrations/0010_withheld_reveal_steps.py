from django.db import migrations, models


class Migration(migrations.Migration):
    """The steps of the last REVEAL_WINDOW in which a key withheld its MPRNG reveal: REVEAL_WITHHOLD_LIMIT of
    them ban the key (btard_wire.board.next_withheld_steps; security review, finding 14)."""

    dependencies = [("runs", "0009_silence_excuse")]

    operations = [
        migrations.AddField(model_name="peer", name="withheld_reveal_steps",
                            field=models.JSONField(blank=True, default=list)),
    ]
