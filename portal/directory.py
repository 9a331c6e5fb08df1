"""Sign-in through LDAP / Active Directory (django-auth-ldap, on when LDAP_SERVER_URI is set):
a person's directory groups make their teams and roles at each sign-in, and a directory
that cannot be reached is said so on the login page instead of a wrong password.

A session, once made, never asks the directory again: people signed in keep working while
it is down, and local accounts (staff) still sign in with their password.
"""

from django.contrib.auth.forms import AuthenticationForm
from django.core.exceptions import ValidationError

from scoring.packages import teams

UNREACHABLE = (
    "The directory cannot be reached right now, so your password could not be checked: "
    "please try again in a few minutes."
)


def connect() -> None:
    """Listen to django-auth-ldap's signals, when it is installed (the `ldap` extra): they
    come only from its backend, so doing so with LDAP off changes nothing."""
    try:
        from django_auth_ldap.backend import ldap_error, populate_user
    except ImportError:
        return
    populate_user.connect(apply_teams, dispatch_uid="dropscore-directory-teams")
    ldap_error.connect(note_unreachable, dispatch_uid="dropscore-directory-unreachable")


def apply_teams(sender, user, ldap_user, **kwargs) -> None:
    """At each sign-in, the teams and roles the person's groups give (DIRECTORY_GROUPS).

    Reading the groups may raise the directory's error: django-auth-ldap then refuses the
    sign-in and reports it (note_unreachable), and no membership has changed."""
    groups = ldap_user.group_names
    if user.pk is None:
        user.save()  # a first sign-in: django-auth-ldap saves the user only after this signal
    teams.apply_directory_groups(user, groups)


def note_unreachable(sender, context, request=None, exception=None, **kwargs) -> None:
    """django-auth-ldap logs the directory's error (logger django_auth_ldap) and answers "no
    such user": the request remembers it, so the login form can say what happened."""
    if request is not None:
        request.directory_unreachable = True


class SignInForm(AuthenticationForm):
    """Django's login form, which says so when the directory could not check the password
    (no local account took it either)."""

    directory_down = False

    def get_invalid_login_error(self) -> ValidationError:
        if getattr(self.request, "directory_unreachable", False):
            self.directory_down = True
            return ValidationError(UNREACHABLE, code="directory_unreachable")
        return super().get_invalid_login_error()
