"""ASGI entry: HTTP through Django, websockets through Channels (origin-checked, by session)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.sessions import SessionMiddlewareStack  # noqa: E402

from studies.routing import websocket_urlpatterns  # noqa: E402
from webapp.origins import SiteOriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": SiteOriginValidator(SessionMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
