"""Who made each change and from where, for the record of changes (scoring.record).

auditlog's middleware reads the actor when a request arrives, but DRF authenticates a
token inside the view: a token request would be recorded with no actor
(jazzband/django-auditlog#115, #137). Here the actor is read when an entry is written, by
then DRF has set the request's user. One auditlog context per request, never nested
(auditlog leaks a receiver per nested context, #846).
"""

from auditlog.middleware import AuditlogMiddleware
from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from portal.client_ip import client_ip
from scoring import record


def channel(request: HttpRequest) -> str:
    """The words of the record for where a change came from."""
    if request.path_info.startswith("/api/"):
        return "api"
    if request.path_info.startswith("/admin/"):
        return "admin"
    return "web"


def signed_in(request: HttpRequest):
    user = request.user
    return user if user.is_authenticated else None


class RecordMiddleware(AuditlogMiddleware):
    @staticmethod
    def _get_actor(request: HttpRequest):
        # Evaluated by the first entry written: after DRF's authentication set request.user.
        return SimpleLazyObject(lambda: signed_in(request))

    @staticmethod
    def _get_remote_addr(request: HttpRequest) -> str | None:
        # auditlog trusts any X-Forwarded-For; the login rate limit's rule trusts only proxies.
        return client_ip(request)

    def __call__(self, request: HttpRequest):
        with record.context(via=channel(request)):
            return super().__call__(request)
