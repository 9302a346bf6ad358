"""ASGI entry point: HTTP through Django, websockets through Channels routing."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "btard_site.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from .routing import websocket_urlpatterns  # noqa: E402

# Daphne does not serve /static/ by itself: the site's few files (htmx, css) are served from
# STATICFILES_DIRS here unless SERVE_STATIC=0 (a front proxy serving STATIC_ROOT instead).
http_app = ASGIStaticFilesHandler(django_asgi_app) if settings.SERVE_STATIC else django_asgi_app
# Request bodies are limited per path before they are read: in Daphne itself (nothing is buffered) and in
# front of Django (any ASGI server). See btard_site.security.BodySizeLimit.
from .security import BodySizeLimit, install_daphne_body_limit, install_daphne_close_reasons  # noqa: E402

install_daphne_body_limit()
install_daphne_close_reasons()
http_app = BodySizeLimit(http_app)

application = ProtocolTypeRouter(
    {
        "http": http_app,
        "websocket": URLRouter(websocket_urlpatterns),
    }
)
_ = AllowedHostsOriginValidator  # browser sockets wrap themselves; workers send no Origin
