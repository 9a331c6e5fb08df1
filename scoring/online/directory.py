"""What a serving process knows of the portal: the models, their versions, and who a token
is. Read from the database by threads of their own, never by a request: the models are
read again every REFRESH_SECONDS (one query for all), a token once and then kept
TOKEN_SECONDS, so a request costs no query (a revoked token stops working within them).
"""

import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.db import close_old_connections
from rest_framework.authtoken.models import Token

from scoring.models import Deployment, Membership, PackageVersion
from scoring.online.protocol import Inputs

REFRESH_SECONDS = 1.0
# A request for a model not known (or not online) yet reads the models again first, at most
# this often: a model switched on answers at once, and a flood of misses costs no more.
MISS_REFRESH_SECONDS = 0.25
TOKEN_SECONDS = 10.0
UNKNOWN_TOKEN_SECONDS = 2.0
# The Try-it form of the model page calls the serving process for its signed-in user.
PORTAL_SALT = "dropscore.online"
PORTAL_MAX_AGE = 60
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Version:
    id: int
    number: int
    sha256: str
    file_name: str
    size: int
    requirements: tuple[str, ...]
    inputs: Inputs


@dataclass(frozen=True)
class Model:
    id: int
    owner_id: int | None
    team_id: int | None
    name: str
    online: bool
    champion: Version | None  # None: no valid champion, or not read (the model is off)
    challenger: Version | None
    share: float | None  # the challenger's split; None: a shadow

    @property
    def label(self) -> str:
        return f"{self.name} (model {self.id})"


@dataclass(frozen=True)
class Caller:
    user_id: int
    staff: bool
    teams: frozenset[int] = frozenset()  # every role may ask a team's model (owners.ACTIONS)

    def may_see(self, model: Model) -> bool:
        if model.team_id is not None:
            return self.staff or model.team_id in self.teams
        return self.staff or model.owner_id == self.user_id


def version_of(version: PackageVersion | None) -> Version | None:
    if version is None or version.state != PackageVersion.State.VALID:
        return None
    package = version.package or {}
    return Version(
        id=version.id,
        number=version.number,
        sha256=version.sha256,
        file_name=version.file.name,
        size=version.size,
        requirements=tuple(package.get("requirements") or ()),
        inputs=Inputs(
            features=list(package.get("features") or ()),
            types=dict(package.get("input_types") or {}),
            id_column=settings.FEATURES_ID_COLUMN,
            max_rows=settings.ONLINE_MAX_ROWS,
        ),
    )


def read_models(known: dict[int, Version]) -> tuple[dict[int, Model], dict[int, Version]]:
    """Every model (so another's is a 404 and one switched off a 409), and the versions the
    online ones answer with. A valid version never changes, and its package is most of
    what there is to read: only the versions not `known` yet are read."""
    rows = list(
        Deployment.objects.values_list(
            "id",
            "owner_id",
            "team_id",
            "name",
            "online",
            "challenger_share",
            "champion_id",
            "challenger_id",
        )
    )
    wanted = {version for row in rows if row[4] for version in row[6:] if version is not None}
    versions = {id_: known[id_] for id_ in wanted & known.keys()}
    unknown = PackageVersion.objects.filter(
        id__in=wanted - known.keys(), state=PackageVersion.State.VALID
    ).only("id", "number", "sha256", "file", "size", "state", "package")
    versions |= {version.id: version_of(version) for version in unknown}
    models = {
        id_: Model(
            id=id_,
            owner_id=owner_id,
            team_id=team_id,
            name=name,
            online=online,
            champion=versions.get(champion_id),
            challenger=versions.get(challenger_id),
            share=share,
        )
        for id_, owner_id, team_id, name, online, share, champion_id, challenger_id in rows
    }
    return models, versions


class Directory:
    """The models by id and by (owner, name), read again in the background; an owner is
    ("user", id) or ("team", id)."""

    def __init__(self):
        self.models: dict[int, Model] = {}
        self.versions: dict[int, Version] = {}  # those the online models answer with
        self.by_name: dict[tuple[str, int, str], Model] = {}
        self.loaded = threading.Event()
        self.refreshed_at = 0.0  # when the latest reading started
        self.missed_at = 0.0  # when a miss last made one
        self.refreshing = threading.Lock()
        self.error: str | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="online directory", daemon=True)

    def start(self) -> "Directory":
        self.thread.start()
        return self

    def run(self) -> None:
        while not self.stopping.is_set():
            self.refresh()
            self.stopping.wait(REFRESH_SECONDS)

    def refresh_after_miss(self, since: float) -> None:
        """In a thread: read the models again for a request that came at `since` and missed,
        unless a reading started after it, or a miss made one a moment ago."""
        with self.refreshing:
            now = time.monotonic()
            if self.refreshed_at < since and now - self.missed_at >= MISS_REFRESH_SECONDS:
                self.missed_at = now
                self.refresh()

    def refresh(self) -> None:
        self.refreshed_at = time.monotonic()
        close_old_connections()  # a database restarted since: a new connection
        try:
            models, self.versions = read_models(self.versions)
        except Exception as exc:  # the database away: serve what we know
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("the models could not be read: %s", self.error)
            return
        self.models = models
        self.by_name = {owner_of(m) + (m.name,): m for m in models.values()}
        self.error = None
        self.loaded.set()

    def find(self, caller: Caller, name_or_id: str) -> Model | None:
        """The caller's own model of this name, else their one team's model of this name
        (a name two of their teams use must be asked by id), else the model of this id the
        caller may see."""
        model = self.by_name.get(("user", caller.user_id, name_or_id))
        if model is None:
            named = [self.by_name.get(("team", team, name_or_id)) for team in caller.teams]
            named = [found for found in named if found is not None]
            model = named[0] if len(named) == 1 else None
        if model is None and name_or_id.isdigit():
            model = self.models.get(int(name_or_id))
        return model if model is not None and caller.may_see(model) else None

    def stop(self) -> None:
        self.stopping.set()


def owner_of(model: Model) -> tuple[str, int]:
    if model.team_id is not None:
        return ("team", model.team_id)
    return ("user", model.owner_id)


class Tokens:
    """Who an Authorization header names; each token read once, then kept a while."""

    def __init__(self):
        self.known: dict[str, tuple[Caller | None, float]] = {}

    def cached(self, header: str) -> tuple[bool, Caller | None]:
        """(whether the answer is known without the database, the caller or None)."""
        found = self.known.get(header)
        if found is None or found[1] < time.monotonic():
            return False, None
        return True, found[0]

    def look_up(self, header: str) -> Caller | None:
        """In a thread: the caller the header names, or None."""
        close_old_connections()
        caller = read_caller(header)
        keep = TOKEN_SECONDS if caller else UNKNOWN_TOKEN_SECONDS
        if len(self.known) > 100_000:  # a flood of made-up tokens keeps no memory
            self.known.clear()
        self.known[header] = (caller, time.monotonic() + keep)
        return caller


def read_caller(header: str) -> Caller | None:
    kind, _, credential = header.partition(" ")
    if kind == "Token":
        token = Token.objects.select_related("user").filter(key=credential.strip()).first()
        user = token.user if token else None
    elif kind == "Portal":
        try:
            user_id = signing.loads(credential.strip(), salt=PORTAL_SALT, max_age=PORTAL_MAX_AGE)
        except signing.BadSignature:
            return None
        user = get_user_model().objects.filter(id=user_id.get("user")).first()
    else:
        return None
    if user is None or not user.is_active:
        return None
    teams = Membership.objects.filter(user=user).values_list("team_id", flat=True)
    return Caller(user.id, user.is_staff, frozenset(teams))
