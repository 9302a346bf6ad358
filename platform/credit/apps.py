from django.apps import AppConfig


class CreditConfig(AppConfig):
    name = "credit"
    verbose_name = "Credit and leaderboards"

    def ready(self):
        from . import fragments  # noqa: F401 - registers this app's live fragment; models load only now
