from django.apps import AppConfig


class PortalConfig(AppConfig):
    name = "portal"

    def ready(self) -> None:
        from portal import directory, tokens  # noqa: F401  (tokens: the record of API tokens)

        directory.connect()
