from django.urls import path

from studies.consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/s/<slug:slug>/chat/", ChatConsumer.as_asgi()),
]
