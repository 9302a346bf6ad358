"""Websocket routes. Apps append their consumers here."""

websocket_urlpatterns: list = []
