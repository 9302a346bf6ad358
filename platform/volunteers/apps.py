from django.apps import AppConfig


class VolunteersConfig(AppConfig):
    name = "volunteers"
    default_auto_field = "django.db.models.BigAutoField"
