from django.urls import path

from .consumers import LiveConsumer, WorkerConsumer

websocket_urlpatterns = [
    path("ws/worker/", WorkerConsumer.as_asgi()),
    path("ws/live/", LiveConsumer.as_asgi()),
]
