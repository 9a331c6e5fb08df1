"""The client's address, as the login rate limit counts it."""

from django.conf import settings
from django.http import HttpRequest


def client_ip(request: HttpRequest) -> str | None:
    """REMOTE_ADDR; behind TRUSTED_PROXIES proxies, the address the outermost one saw.

    Each proxy appends the address it got the request from to X-Forwarded-For, so the
    client is the TRUSTED_PROXIES-th entry from the right. Entries further left come
    from the client itself and are never trusted: a client could name any address.
    """
    proxies = settings.TRUSTED_PROXIES
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
    forwarded = [address.strip() for address in forwarded if address.strip()]
    if proxies and len(forwarded) >= proxies:
        return forwarded[-proxies]
    return request.META.get("REMOTE_ADDR")
