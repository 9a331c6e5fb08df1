from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"

    def ready(self) -> None:
        from portal import tokens  # noqa: F401  (connects the record of API tokens)
