"""The fixed cast of the tests: alice owns models, mallory is another customer of the
portal, sam is staff and root a superuser. Every test meets the same people."""

from django.contrib.auth.models import User
from django.test import Client
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

CAST = {
    "owner": ("alice", "alice@bank.example", "alice-password-123"),
    "outsider": ("mallory", "mallory@telco.example", "mallory-password-123"),
    "staff": ("sam", "sam@bank.example", "sam-password-123"),
    "superuser": ("root", "root@bank.example", "root-password-123"),
}


def make(role: str) -> User:
    username, email, password = CAST[role]
    if role == "superuser":
        return User.objects.create_superuser(username, email, password)
    return User.objects.create_user(username, email, password, is_staff=role == "staff")


def api_client_for(user) -> APIClient:
    client = APIClient()
    token, _ = Token.objects.get_or_create(user=user)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    return client


def session(user) -> Client:
    client = Client()
    client.force_login(user)
    return client
