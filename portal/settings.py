"""Dropscore settings: everything comes from the environment, with safe local defaults.

The helpers below fail loudly on a malformed value instead of guessing.
"""

import hashlib
import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from scoring.engine.pool import default_pool_size

BASE_DIR = Path(__file__).resolve().parent.parent
STATE_DIR = Path(os.getenv("DROPSCORE_STATE_DIR", BASE_DIR / ".dropscore"))


def env_str(name: str, default: str) -> str:
    return os.getenv(name, default)


def env_bool(name: str, default: bool) -> bool:
    value = os.getenv(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {value!r}")


def env_int(name: str, default: int) -> int:
    value = os.getenv(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None


def env_float(name: str, default: float) -> float:
    value = os.getenv(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {value!r}") from None


def env_crontab(name: str, default: str) -> crontab:
    """A 5-field cron (minute hour day-of-month month day-of-week) as Celery beat's schedule."""
    value = os.getenv(name, default)
    fields = value.split()
    try:
        if len(fields) != 5:
            raise ValueError("5 fields expected")
        minute, hour, day_of_month, month, day_of_week = fields
        return crontab(minute, hour, day_of_week, day_of_month, month)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a 5-field cron, got {value!r}: {exc}") from None


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.getenv(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = env_str("SECRET_KEY", "dev-only-insecure-key" if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

# --- HTTPS (on by default when DEBUG is off; `make run` serves plain http) ----
# Behind a TLS proxy that sets X-Forwarded-Proto. Only where nothing reaches the web
# server around the proxy: any client could otherwise claim https.
if env_bool("SECURE_PROXY_SSL_HEADER", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
# Browsers remember HSTS for this long: start at an hour, raise to a year once https is sure.
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
# The header alone lists nothing: a site joins browsers' preload lists only when submitted.
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "axes",
    "auditlog",
    "scoring",
    "portal",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Who made each change, and from where, for the record of changes (portal/recording.py).
    "portal.recording.RecordMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last: it turns a login refused for too many failures into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.oidc.sign_in_context",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        env_str("DATABASE_URL", f"sqlite:///{STATE_DIR / 'db.sqlite3'}"),
        conn_max_age=env_int("CONN_MAX_AGE", 60),
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    # IMMEDIATE takes the write lock at BEGIN, so a web request and a worker never
    # deadlock upgrading a read lock; the timeout rides out short writes of the other.
    DATABASES["default"]["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 30}
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # A file, not memory, so a Celery worker in another process sees the test data;
    # one per test session, so two sessions never share it.
    DATABASES["default"]["TEST"] = {"NAME": str(STATE_DIR / f"test-db-{os.getpid()}.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "models"
LOGOUT_REDIRECT_URL = "login"

# --- Teams and sign-in -------------------------------------------------------
# Directory groups (LDAP/Active Directory, or an OpenID provider's groups claim) give teams
# and roles at each sign-in: "group=team:role" pairs, comma-separated, e.g.
# "ds-retail-managers=retail:manager,ds-retail=retail:member" (scoring.packages.teams).
# A team named here is made at the first sign-in that needs it.


def directory_groups(text: str) -> dict[str, tuple[str, str]]:
    pairs = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        group, _, target = item.partition("=")
        team, _, role = target.partition(":")
        if not (group.strip() and team.strip() and role.strip() in ("viewer", "member", "manager")):
            raise ImproperlyConfigured(
                f"DIRECTORY_GROUPS: {item!r} is not group=team:role (a role: viewer, member, "
                "manager)"
            )
        pairs[group.strip()] = (team.strip(), role.strip())
    return pairs


DIRECTORY_GROUPS = directory_groups(env_str("DIRECTORY_GROUPS", ""))

# LDAP / Active Directory (django-auth-ldap, the `ldap` extra): on when LDAP_SERVER_URI is
# set. The portal binds as LDAP_BIND_DN, finds the person under LDAP_USER_SEARCH_BASE, checks
# their password by binding as them, and reads their groups, which DIRECTORY_GROUPS turns
# into teams and roles (portal.directory). Local accounts keep working beside it.
LDAP_SERVER_URI = env_str("LDAP_SERVER_URI", "")
LDAP_GROUP_FILTERS = {
    "groupOfNames": "(objectClass=groupOfNames)",
    "activeDirectory": "(objectClass=group)",
    "nestedActiveDirectory": "(objectClass=group)",
}


def ldap_settings() -> dict:
    """django-auth-ldap's AUTH_LDAP_* settings from the LDAP_* variables."""
    try:
        import ldap
        from django_auth_ldap import config
    except ImportError:
        raise ImproperlyConfigured(
            "LDAP_SERVER_URI is set but django-auth-ldap is not installed: "
            "pip install -e '.[ldap]' (it builds against libldap2-dev and libsasl2-dev)"
        ) from None
    user_base = env_str("LDAP_USER_SEARCH_BASE", "")
    if not user_base:
        raise ImproperlyConfigured("LDAP_SERVER_URI is set: LDAP_USER_SEARCH_BASE must be too")
    group_type = env_str("LDAP_GROUP_TYPE", "") or "groupOfNames"  # blank: the default
    if group_type not in LDAP_GROUP_FILTERS:
        raise ImproperlyConfigured(
            f"LDAP_GROUP_TYPE must be one of {', '.join(LDAP_GROUP_FILTERS)}, got {group_type!r}"
        )
    # A directory that does not answer fails the sign-in after this long instead of holding
    # the login page (and a web thread) for the system's TCP timeout.
    timeout = env_float("LDAP_TIMEOUT_SECONDS", 5)
    # Below, a blank value is the default, as deploy/.env.example's blank lines say.
    return {
        "AUTH_LDAP_SERVER_URI": env_str("LDAP_SERVER_URI", ""),
        "AUTH_LDAP_START_TLS": env_bool("LDAP_START_TLS", False),
        "AUTH_LDAP_BIND_DN": env_str("LDAP_BIND_DN", ""),
        "AUTH_LDAP_BIND_PASSWORD": env_str("LDAP_BIND_PASSWORD", ""),
        "AUTH_LDAP_USER_SEARCH": config.LDAPSearch(
            user_base,
            ldap.SCOPE_SUBTREE,
            env_str("LDAP_USER_SEARCH_FILTER", "") or "(uid=%(user)s)",
        ),
        "AUTH_LDAP_GROUP_SEARCH": config.LDAPSearch(
            env_str("LDAP_GROUP_SEARCH_BASE", "") or user_base,
            ldap.SCOPE_SUBTREE,
            env_str("LDAP_GROUP_SEARCH_FILTER", "") or LDAP_GROUP_FILTERS[group_type],
        ),
        "AUTH_LDAP_GROUP_TYPE": {
            "groupOfNames": config.GroupOfNamesType,
            "activeDirectory": config.ActiveDirectoryGroupType,
            "nestedActiveDirectory": config.NestedActiveDirectoryGroupType,
        }[group_type](),
        "AUTH_LDAP_USER_ATTR_MAP": {
            "first_name": env_str("LDAP_FIRST_NAME_ATTR", "") or "givenName",
            "last_name": env_str("LDAP_LAST_NAME_ATTR", "") or "sn",
            "email": env_str("LDAP_EMAIL_ATTR", "") or "mail",
        },
        # Groups become teams through DIRECTORY_GROUPS, not Django groups.
        "AUTH_LDAP_MIRROR_GROUPS": False,
        "AUTH_LDAP_ALWAYS_UPDATE_USER": True,
        "AUTH_LDAP_CONNECTION_OPTIONS": {
            ldap.OPT_NETWORK_TIMEOUT: timeout,
            ldap.OPT_TIMEOUT: timeout,
            # Active Directory answers a search of the domain's root with referrals to
            # other servers that python-ldap would follow anonymously, and fail.
            ldap.OPT_REFERRALS: 0,
        },
    }


if LDAP_SERVER_URI:
    globals().update(ldap_settings())

# Login rate limit (django-axes): after AXES_FAILURE_LIMIT failed logins of one username from
# one IP, that pair is locked out for AXES_COOLOFF_MINUTES, counted from its last failure.
# Axes' backend comes first so a locked-out pair never reaches the password check; API
# tokens do not go through authenticate() and are unaffected. Then the directory, when on,
# then local accounts (`make run`'s demo, staff), which sign in whether it answers or not.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    *(["django_auth_ldap.backend.LDAPBackend"] if LDAP_SERVER_URI else []),
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("AXES_COOLOFF_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/login.html"
# Behind a proxy every login comes from its address: counting per client needs to know how
# many proxies (each appending to X-Forwarded-For) stand in front of the web server.
TRUSTED_PROXIES = env_int("TRUSTED_PROXIES", 0)
AXES_CLIENT_IP_CALLABLE = "portal.client_ip.client_ip"

# Sign-in through an OpenID Connect provider (portal/oidc.py, mozilla-django-oidc), beside the
# local accounts: off unless OIDC_ENABLED. The provider's endpoints come from OIDC_ISSUER's
# discovery document at each sign-in, unless all four are set. Its groups claim goes through
# DIRECTORY_GROUPS at each sign-in.
OIDC_ENABLED = env_bool("OIDC_ENABLED", False)
OIDC_PROVIDER_NAME = env_str("OIDC_PROVIDER_NAME", "single sign-on")  # "Sign in with ..."
OIDC_ISSUER = env_str("OIDC_ISSUER", "")
OIDC_OP_AUTHORIZATION_ENDPOINT = env_str("OIDC_OP_AUTHORIZATION_ENDPOINT", "")
OIDC_OP_TOKEN_ENDPOINT = env_str("OIDC_OP_TOKEN_ENDPOINT", "")
OIDC_OP_USER_ENDPOINT = env_str("OIDC_OP_USER_ENDPOINT", "")
OIDC_OP_JWKS_ENDPOINT = env_str("OIDC_OP_JWKS_ENDPOINT", "")
OIDC_RP_CLIENT_ID = env_str("OIDC_RP_CLIENT_ID", "")
OIDC_RP_CLIENT_SECRET = env_str("OIDC_RP_CLIENT_SECRET", "")
OIDC_RP_SCOPES = env_str("OIDC_RP_SCOPES", "openid email profile groups")
OIDC_RP_SIGN_ALGO = env_str("OIDC_RP_SIGN_ALGO", "RS256")
OIDC_USERNAME_CLAIM = env_str("OIDC_USERNAME_CLAIM", "preferred_username")
OIDC_GROUPS_CLAIM = env_str("OIDC_GROUPS_CLAIM", "groups")
# Seconds the portal waits on the provider (mozilla-django-oidc waits forever by default).
OIDC_TIMEOUT = env_float("OIDC_TIMEOUT_SECONDS", 10)
OIDC_USE_PKCE = True
LOGIN_REDIRECT_URL_FAILURE = "login"  # with a message that says what went wrong
if OIDC_ENABLED:
    missing = [
        name for name in ("OIDC_RP_CLIENT_ID", "OIDC_RP_CLIENT_SECRET") if not globals()[name]
    ]
    endpoints = ("AUTHORIZATION", "TOKEN", "USER", "JWKS")
    if not OIDC_ISSUER and not all(globals()[f"OIDC_OP_{kind}_ENDPOINT"] for kind in endpoints):
        missing.append("OIDC_ISSUER (or all four OIDC_OP_*_ENDPOINT)")
    if missing:
        raise ImproperlyConfigured(f"OIDC_ENABLED needs {' and '.join(missing)}")
    AUTHENTICATION_BACKENDS.append("portal.oidc.Backend")

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # Production: collectstatic (at image build) writes hashed, compressed copies that
    # WhiteNoise serves with far-future caching. Debug serves the sources as they are.
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
    # Packages (PackageVersion.file), in MODELS_BUCKET: django-storages' S3 backend, which
    # takes the bucket, endpoint, keys and region from the S3 settings below when it is
    # made. Private objects: no ACL, and no signed URLs (only the portal reads them).
    "packages": {
        "BACKEND": "scoring.packages.storage.PackageStorage",
        "OPTIONS": {"default_acl": None, "querystring_auth": False},
    },
}

# Uploads always go to a temporary file, never to memory: the web process holds
# a package in constant memory whatever its size (see portal/uploads.py).
FILE_UPLOAD_MAX_MEMORY_SIZE = 0
FILE_UPLOAD_HANDLERS = ["portal.uploads.LimitedTemporaryFileUploadHandler"]

# --- S3 storage -------------------------------------------------------------
S3_ENDPOINT_URL = env_str("S3_ENDPOINT_URL", "http://127.0.0.1:8333")
S3_ACCESS_KEY = env_str("S3_ACCESS_KEY", "dropscore")
S3_SECRET_KEY = env_str("S3_SECRET_KEY", "dropscore-secret")
S3_REGION = env_str("S3_REGION", "us-east-1")
MODELS_BUCKET = env_str("MODELS_BUCKET", "dropscore-models")
SCORES_BUCKET = env_str("SCORES_BUCKET", "dropscore-scores")
# Delta commits use S3 conditional writes (MinIO, SeaweedFS, AWS have them); off: a database lock.
S3_CONDITIONAL_PUT = env_bool("S3_CONDITIONAL_PUT", True)
# The scores table's maintenance (README, "Table maintenance"): files no version references
# are deleted once this old; a reader's snapshot or a time travel older than this breaks.
SCORES_RETENTION_HOURS = env_int("SCORES_RETENTION_HOURS", 168)
if SCORES_RETENTION_HOURS < 0:
    raise ImproperlyConfigured("SCORES_RETENTION_HOURS must be 0 or more hours")
# A deleted model's scores stay in the table this many days (its record stays for good);
# then the daily maintenance removes its partitions in a Delta commit (README, "Deleting").
DELETED_SCORES_RETENTION_DAYS = env_int("DELETED_SCORES_RETENTION_DAYS", 90)
if DELETED_SCORES_RETENTION_DAYS < 0:
    raise ImproperlyConfigured("DELETED_SCORES_RETENTION_DAYS must be 0 or more days")
# When beat sends it: a 5-field cron in TIME_ZONE (minute hour day month weekday).
SCORES_MAINTENANCE_SCHEDULE = env_crontab("SCORES_MAINTENANCE_CRON", "0 3 * * *")

# --- Feature source ---------------------------------------------------------
FEATURES_URI = env_str("FEATURES_URI", "")
FEATURES_ID_COLUMN = env_str("FEATURES_ID_COLUMN", "entity_id")
FEATURES_DATE_COLUMN = env_str("FEATURES_DATE_COLUMN", "dt")
# How long a run waits for a fresh enough slice before it fails (a package's
# params.wait_for_slice_hours overrides it).
WAIT_FOR_SLICE_HOURS = env_float("WAIT_FOR_SLICE_HOURS", 6)
# Ground truth: outcomes by entity and date, in the same kinds of source as FEATURES_URI
# (blank: no matured-target checks). LABELS_DATE_COLUMN is the date an outcome refers to.
LABELS_URI = env_str("LABELS_URI", "")
LABELS_ID_COLUMN = env_str("LABELS_ID_COLUMN", "entity_id")
LABELS_DATE_COLUMN = env_str("LABELS_DATE_COLUMN", "dt")

# --- Engine -----------------------------------------------------------------
# Who scores a batch: `celery` (the workers themselves, the default) or `spark` (one Spark
# job per batch, on SPARK_MASTER, from the table FEATURES_URI names the way Spark knows it).
ENGINE = env_str("ENGINE", "celery")
if ENGINE not in ("celery", "spark"):
    raise ImproperlyConfigured(f"ENGINE must be celery or spark, got {ENGINE!r}")
SPARK_MASTER = env_str("SPARK_MASTER", "local[*]")
# A spark-defaults.conf of the cluster's (lines `key value`), then each SPARK_CONF_<any
# name>=<key>=<value> on top: the Spark session's configuration (scoring.engine.spark.session).
SPARK_DEFAULTS_FILE = env_str("SPARK_DEFAULTS_FILE", "")
SPARK_CONF = dict(
    value.split("=", 1)
    for name, value in sorted(os.environ.items())
    if name.startswith("SPARK_CONF_") and "=" in value
)

# --- Champion changes ------------------------------------------------------
# Four eyes: a promotion or rollback waits until a member of APPROVERS_GROUP (staff) other
# than the one who asked approves it (scoring.packages.roles).
REQUIRE_APPROVAL = env_bool("REQUIRE_APPROVAL", False)
APPROVERS_GROUP = env_str("APPROVERS_GROUP", "approvers")

# --- Quotas and limits ------------------------------------------------------
QUOTA_ACTIVE_MODELS = env_int("QUOTA_ACTIVE_MODELS", 10)
QUOTA_BYTES = env_int("QUOTA_BYTES", 1024**3)
MAX_PACKAGE_BYTES = env_int("MAX_PACKAGE_BYTES", 512 * 1024**2)

SANDBOX_TIMEOUT_SECONDS = env_int("SANDBOX_TIMEOUT_SECONDS", 120)
SANDBOX_MEMORY_BYTES = env_int("SANDBOX_MEMORY_BYTES", 4 * 1024**3)
SANDBOX_CPU_SECONDS = env_int("SANDBOX_CPU_SECONDS", 600)
SMOKE_SAMPLE_ROWS = env_int("SMOKE_SAMPLE_ROWS", 200)
# Live sandboxes per worker process at most, whatever the number of models: one sandbox
# serves several models of one owner. By default one a core (fewer below a GiB a core).
SANDBOX_POOL = env_int("SANDBOX_POOL", default_pool_size())
# Package bytes a sandbox keeps loaded at once. A sandbox's models that fit stay loaded from
# chunk to chunk; beyond it they take turns, each turn loaded, scored and let go, so a
# sandbox's memory stays bounded however many (or how large) its models are.
SANDBOX_LOADED_BYTES = env_int("SANDBOX_LOADED_BYTES", 256 * 1024**2)
# --- Online scoring (scoring.online) ----------------------------------------
# Where callers reach the serving processes (the Online card's URLs), and where `make run`
# (manage.py serve_online) listens.
ONLINE_URL = env_str("ONLINE_URL", "http://127.0.0.1:8001")
ONLINE_HOST = env_str("ONLINE_HOST", "127.0.0.1")
ONLINE_PORT = env_int("ONLINE_PORT", 8001)
# A request: at most this many rows and bytes (413 beyond), answered within this time (504).
ONLINE_MAX_ROWS = env_int("ONLINE_MAX_ROWS", 10_000)
ONLINE_MAX_BODY_BYTES = env_int("ONLINE_MAX_BODY_BYTES", 16 * 1024**2)
ONLINE_TIMEOUT_SECONDS = env_float("ONLINE_TIMEOUT_SECONDS", 2.0)
# Per model and serving process: requests a second, and rows waiting for the sandbox;
# beyond either, 429 with Retry-After. So too when the requests before have waited this
# long (for the model, or for the process to read them): excess is refused, not queued.
ONLINE_RATE_LIMIT = env_float("ONLINE_RATE_LIMIT", 5000)
ONLINE_QUEUE_ROWS = env_int("ONLINE_QUEUE_ROWS", 20_000)
ONLINE_MAX_WAIT_SECONDS = env_float("ONLINE_MAX_WAIT_SECONDS", 0.02)
# Per serving process: requests admitted and not yet answered. Past it, 429: a process
# that reads more than it can answer makes every answer wait for all the others.
ONLINE_MAX_IN_FLIGHT = env_int("ONLINE_MAX_IN_FLIGHT", 16)
# A model not loaded yet: a request waits this long for it, then 503 with Retry-After.
ONLINE_LOAD_WAIT_SECONDS = env_float("ONLINE_LOAD_WAIT_SECONDS", 10.0)
# Package memory one serving process keeps loaded; beyond it, the least recently used go.
ONLINE_MEMORY_BYTES = env_int("ONLINE_MEMORY_BYTES", 4 * 1024**3)
# The request log (the `requests` Delta table): written every this many seconds; rows
# beyond the queue are dropped and counted, never an answer delayed.
ONLINE_LOG = env_bool("ONLINE_LOG", True)
ONLINE_LOG_FLUSH_SECONDS = env_float("ONLINE_LOG_FLUSH_SECONDS", 5.0)
ONLINE_LOG_QUEUE_ROWS = env_int("ONLINE_LOG_QUEUE_ROWS", 200_000)
# A day of requests stays in the log this many days (a deleted model's, as long as its
# scores); then the daily maintenance removes it. The online check reads yesterday's.
ONLINE_LOG_RETENTION_DAYS = env_int("ONLINE_LOG_RETENTION_DAYS", 90)
if ONLINE_LOG_RETENTION_DAYS < 2:
    raise ImproperlyConfigured("ONLINE_LOG_RETENTION_DAYS must be 2 or more days")
# When beat checks yesterday's (UTC) traffic of each online model against its batch run
# (scoring.online.skew): a 5-field cron in TIME_ZONE.
ONLINE_CHECK_SCHEDULE = env_crontab("ONLINE_CHECK_CRON", "15 1 * * *")

# Packages that pin libraries (`requirements`) run in environments built once with uv, kept
# here on each worker, from this index (uv's or pip's usual variable, else PyPI). Removed by a
# daily beat task when unused this many days, or beyond the count or bytes (least used first).
SANDBOX_ENVIRONMENTS_DIR = Path(
    env_str("SANDBOX_ENVIRONMENTS_DIR", str(STATE_DIR / "environments"))
)
SANDBOX_INDEX_URL = env_str("UV_INDEX_URL", env_str("PIP_INDEX_URL", "https://pypi.org/simple"))
SANDBOX_ENVIRONMENT_BUILD_SECONDS = env_int("SANDBOX_ENVIRONMENT_BUILD_SECONDS", 900)
SANDBOX_ENVIRONMENTS_MAX_AGE_DAYS = env_float("SANDBOX_ENVIRONMENTS_MAX_AGE_DAYS", 30)
SANDBOX_ENVIRONMENTS_MAX_COUNT = env_int("SANDBOX_ENVIRONMENTS_MAX_COUNT", 20)
SANDBOX_ENVIRONMENTS_MAX_BYTES = env_int("SANDBOX_ENVIRONMENTS_MAX_BYTES", 10 * 1024**3)
SANDBOX_ENVIRONMENTS_CLEANUP_SCHEDULE = env_crontab(
    "SANDBOX_ENVIRONMENTS_CLEANUP_CRON", "30 3 * * *"
)
# The worker keeps local copies of packages (by sha256) up to this size.
PACKAGE_CACHE_DIR = env_str("PACKAGE_CACHE_DIR", "")
PACKAGE_CACHE_BYTES = env_int("PACKAGE_CACHE_BYTES", 2 * 1024**3)

# --- Scoring runs -----------------------------------------------------------
CHUNK_ROWS = env_int("CHUNK_ROWS", 100_000)
# A Parquet slice larger than this is split into parts of about this many rows,
# scored by as many workers as are free (0: never split).
PART_ROWS = env_int("PART_ROWS", 2_000_000)
# A batch of more models than this is planned as shards of models that share columns,
# each a unit (or a unit per row part) that any free worker takes.
SHARD_MODELS = env_int("SHARD_MODELS", 250)
# A running run's worker writes a heartbeat; tick takes back a run whose heartbeat is older.
HEARTBEAT_SECONDS = env_int("HEARTBEAT_SECONDS", 20)
RUN_LEASE_SECONDS = env_int("RUN_LEASE_SECONDS", 180)
# A queued run that no worker took for this long lost its message: tick sends it again.
REQUEUE_AFTER_SECONDS = env_int("REQUEUE_AFTER_SECONDS", 300)
# A failure email waits this long for the other failures of its moment, so each address
# gets one email for a batch whose models all fail (a feature source that is down).
FAILURE_EMAIL_GATHER_SECONDS = env_int("FAILURE_EMAIL_GATHER_SECONDS", 60)
# Chunks are handed to sandboxes as Arrow files here: shared memory where there is some.
CHUNK_DIR = env_str("CHUNK_DIR", "/dev/shm" if Path("/dev/shm").is_dir() else "")

# --- Data quality (a package's params psi_warn, psi_alert, ... override these) ---
PSI_WARN = env_float("PSI_WARN", 0.1)
PSI_ALERT = env_float("PSI_ALERT", 0.25)
ADVERSARIAL_WARN = env_float("ADVERSARIAL_WARN", 0.6)
ADVERSARIAL_ALERT = env_float("ADVERSARIAL_ALERT", 0.65)
# Rows of features and scores kept per run while it scores, for the next run's checks.
QUALITY_SAMPLE_ROWS = env_int("QUALITY_SAMPLE_ROWS", 20_000)

# --- Celery -----------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")


def database_key_prefix(name: str) -> str:
    """The Redis prefix of a portal on this database. No "/": kombu takes a fanout channel's
    exchange (the workers' control channel carries the prefix) to end at the first one, so a
    SQLite file's path becomes its file name and a hash of the whole path."""
    name = str(name)
    if "/" in name:
        name = f"{Path(name).name}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return f"dropscore:{name}:"


# One Redis may serve several portals (`make test` beside `make run`, a staging beside
# production): each keeps its keys (scoring.redis_keys), its queue and its workers' control
# channel under a prefix of its own. By default from the database's name, since the
# database is what makes a portal itself: its web, worker and beat share it.
REDIS_KEY_PREFIX = env_str("REDIS_KEY_PREFIX", database_key_prefix(DATABASES["default"]["NAME"]))
if not REDIS_KEY_PREFIX or "/" in REDIS_KEY_PREFIX:
    raise ImproperlyConfigured(
        f"REDIS_KEY_PREFIX must be a non-empty name without '/', got {REDIS_KEY_PREFIX!r}: "
        "the workers' control channel is named after it"
    )
CELERY_BROKER_URL = REDIS_URL
CELERY_TIMEZONE = TIME_ZONE  # beat's crontabs (the maintenance's) read in the site's zone
CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_QUEUE", f"{REDIS_KEY_PREFIX}tasks")
# The status page's questions (ping, sandboxes) go to this portal's workers only, and their
# answers count towards the roll's length only (scoring.engine.worker_roll).
CELERY_CONTROL_EXCHANGE = f"{REDIS_KEY_PREFIX}control"
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Beside the tasks, workers load the commands the status page asks for their sandboxes'
# protections and their environments.
CELERY_IMPORTS = [
    "scoring.engine.worker_probe",
    "scoring.engine.environments",
    "scoring.engine.worker_roll",
]
CELERY_TASK_IGNORE_RESULT = True
# A task is acknowledged when done, so a killed worker's task is delivered again.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A Redis blip must not cancel running batches (Celery 6 will by default): their runs are
# claimed in the database, so the batch finishes and a redelivery finds nothing to redo.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# A worker process starts the sandboxes' zygote, and with ENGINE=spark a JVM, before its first
# task (scoring.tasks.start_sandbox_zygote): 4 s, Celery's default wait, is too short for a JVM.
CELERY_WORKER_PROC_ALIVE_TIMEOUT = 120 if ENGINE == "spark" else 4.0
# Longer than any batch: Redis redelivers an unacknowledged task after this (runs are
# claimed in the database, so a redelivery never doubles one).
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env_int("VISIBILITY_TIMEOUT_SECONDS", 12 * 3600)
}
CELERY_BEAT_SCHEDULE = {
    "tick": {"task": "scoring.tasks.tick", "schedule": 60.0, "options": {"expires": 55}},
    "check-ground-truth": {
        "task": "scoring.tasks.check_ground_truth",
        "schedule": 3600.0,
        "options": {"expires": 3000},
    },
    "maintain-scores-table": {
        "task": "scoring.tasks.maintain_scores_table",
        "schedule": SCORES_MAINTENANCE_SCHEDULE,
        "options": {"expires": 3600},  # a late one waits for the next day
    },
    "check-online-traffic": {
        "task": "scoring.tasks.check_online_traffic",
        "schedule": ONLINE_CHECK_SCHEDULE,
        "options": {"expires": 3600},  # a late one waits for the next day
    },
    "remove-unused-environments": {
        "task": "scoring.tasks.remove_unused_environments",
        "schedule": SANDBOX_ENVIRONMENTS_CLEANUP_SCHEDULE,
        "options": {"expires": 3600},
    },
}

# --- Email ------------------------------------------------------------------
EMAIL_BACKEND = env_str("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
EMAIL_PORT = env_int("EMAIL_PORT", 25)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
# Seconds an SMTP connection may wait on the server (Django waits forever by default): a mail
# server that accepts and never answers must not hold a worker for good.
EMAIL_TIMEOUT = env_float("EMAIL_TIMEOUT", 10)
EMAIL_FILE_PATH = env_str("EMAIL_FILE_PATH", str(STATE_DIR / "mail"))
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Dropscore <dropscore@localhost>")
SITE_URL = env_str("SITE_URL", "http://127.0.0.1:8000")

# --- REST API ---------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: a request without credentials gets 401 with "WWW-Authenticate: Token".
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.team_tokens.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "portal.api.errors.exception_handler",
    # ?format= is ours (csv or parquet for scores), not DRF's renderer switch.
    "URL_FORMAT_OVERRIDE": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Dropscore API",
    "DESCRIPTION": "Deploy model packages and get them scored on a schedule.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Two "status" fields with different choices: each enum gets a name of its own.
    "ENUM_NAME_OVERRIDES": {
        "DeploymentStatusEnum": "scoring.models.Deployment.Status",
        "RunStatusEnum": "scoring.models.ScoringRun.Status",
        # A version's dropped_as and a run's role share their choices: one enum.
        "RoleEnum": "scoring.models.Role",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
