"""The chat socket's Origin check: scheme, host and port must be one of the site's own origins.

channels' AllowedHostsOriginValidator compares host names only, so a page served on another port
of the same host (another app, a dev server, anything an attacker can put there) could open the
chat socket with the participant's cookies. Here the Origin must equal, scheme and port included:
- the origin the browser asked for: the request's Host (an allowed host) with the scheme of the
  connection, or https where the proxy says so (SECURE_PROXY_SSL_HEADER, as Django trusts it);
- SITE_URL's origin; or
- an entry of CSRF_TRUSTED_ORIGINS ("https://*.example.org" matches its subdomains, as in Django).
A missing or unreadable Origin is refused, as channels does: browsers always send one on a
websocket, and a client that sends none is not a browser page the check protects.
"""

from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.http import is_same_domain

DEFAULT_PORTS = {"http": 80, "https": 443}
Origin = tuple[str, str, int]


def parse_origin(value: str) -> Origin | None:
    """(scheme, host, port) of an http(s) origin, the default port filled in; None if not one."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), (parts.hostname or "")
    if scheme not in DEFAULT_PORTS or not host or parts.path not in ("", "/"):
        return None
    return scheme, host.lower(), port or DEFAULT_PORTS[scheme]


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            try:
                return value.decode("latin1")
            except UnicodeDecodeError:
                return None
    return None


def _own_origin(scope: dict) -> Origin | None:
    """The origin the browser connected to: its Host header, if allowed, with the real scheme."""
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _ = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    secure = scope.get("scheme") in ("wss", "https")
    proxy = settings.SECURE_PROXY_SSL_HEADER
    if proxy:
        name, expected = proxy
        header = name.removeprefix("HTTP_").replace("_", "-").lower().encode()
        secure = secure or (_header(scope, header) or "").split(",")[0].strip() == expected
    return parse_origin(f"{'https' if secure else 'http'}://{host}")


def origin_allowed(origin: Origin, scope: dict) -> bool:
    """Whether this Origin is the site's own for this connection (see the module docstring)."""
    if origin == _own_origin(scope) or origin == parse_origin(settings.SITE_URL):
        return True
    scheme, host, port = origin
    for trusted in settings.CSRF_TRUSTED_ORIGINS:
        parts = urlsplit(trusted)
        if "*" in parts.netloc:
            pattern = parts.netloc.lstrip("*")
            netloc = host if port == DEFAULT_PORTS[scheme] else f"{host}:{port}"
            if parts.scheme == scheme and is_same_domain(netloc, pattern):
                return True
        elif origin == parse_origin(trusted):
            return True
    return False


class SiteOriginValidator:
    """Channels middleware: deny a websocket whose Origin is not one of the site's own."""

    def __init__(self, application) -> None:
        self.application = application

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket":
            raise ValueError("SiteOriginValidator only guards websocket connections.")
        value = _header(scope, b"origin")
        origin = parse_origin(value) if value else None
        if origin is not None and origin_allowed(origin, scope):
            return await self.application(scope, receive, send)
        return await WebsocketDenier()(scope, receive, send)
