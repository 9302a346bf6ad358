"""Websocket routes. Apps append their consumers here."""

from live.routing import websocket_urlpatterns as live_routes

websocket_urlpatterns: list = [*live_routes]
