"""Start the test OpenID provider (django-oauth-toolkit, settings beside this file) on a
free loopback port, with its own SQLite database in `state`, as a process of its own."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from deploy import services

ROOT = Path(__file__).resolve().parents[2]
CLIENT_ID = "dropscore-portal"
CLIENT_SECRET = "dropscore-portal-secret"


@dataclass
class Provider:
    service: services.Service
    state: Path

    @property
    def issuer(self) -> str:
        return f"{self.service.url}/o"

    def manage(self, *args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=ROOT,
            env=environment(self.state),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode:
            raise RuntimeError(f"provider's {args[0]} failed:\n{result.stdout}{result.stderr}")

    def person(self, username: str, password: str, groups: list[str], **names: str) -> None:
        """Make or change a person of the provider's directory; `names`: email, first_name,
        last_name."""
        options = [f"--{name.replace('_', '-')}={value}" for name, value in names.items()]
        self.manage(
            "person", username, f"--password={password}", f"--groups={','.join(groups)}", *options
        )

    def stop(self) -> None:
        self.service.stop()


def environment(state: Path) -> dict:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.oidc_provider.settings",
        "PROVIDER_STATE_DIR": str(state),
        "PYTHONPATH": str(ROOT),
    }


def start(state: Path, redirect_uri: str) -> Provider:
    """The provider, ready (its discovery document answers), with the portal's client
    registered for `redirect_uri`."""
    state.mkdir(parents=True, exist_ok=True)
    port = services.free_port()
    log = state / "provider.log"
    with open(log, "ab") as out:
        setup = subprocess.run(
            [
                sys.executable,
                "-m",
                "django",
                "provider_setup",
                f"--client-id={CLIENT_ID}",
                f"--client-secret={CLIENT_SECRET}",
                f"--redirect-uri={redirect_uri}",
            ],
            cwd=ROOT,
            env=environment(state),
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
        if setup.returncode:
            raise RuntimeError(f"the provider's setup failed; see {log}")
        process = subprocess.Popen(
            [sys.executable, "-m", "django", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=ROOT,
            env=environment(state),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    service = services.Service("OpenID provider", process, f"http://127.0.0.1:{port}", log)
    provider = Provider(service, state)
    discovery = f"{provider.issuer}/.well-known/openid-configuration"
    try:
        services.wait_for(
            lambda: services.health(discovery), "the OpenID provider", 60, process, log
        )
    except RuntimeError:
        service.stop(grace=2)
        raise
    return provider
