from django.apps import AppConfig


class RunsConfig(AppConfig):
    name = "runs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import fragments  # noqa: F401 - registers this app's live fragment; models load only now
