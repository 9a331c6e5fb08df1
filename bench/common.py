"""What the load benches share: a throwaway database, and a verdict against their bounds."""

import contextlib
import os


@contextlib.contextmanager
def throwaway_database(prefix: str):
    """A fresh database beside DATABASE_URL's (migrated; dropped at the end): its name."""
    from django.db import connection

    real_name = connection.settings_dict["NAME"]
    if connection.vendor == "postgresql":
        connection.settings_dict["TEST"]["NAME"] = f"{prefix}_{os.getpid()}"
    name = connection.creation.create_test_db(verbosity=0, autoclobber=True, serialize=False)
    try:
        yield name
    finally:
        connection.creation.destroy_test_db(real_name, verbosity=0)


def database_url_for(name: str) -> str:
    """DATABASE_URL for another process to use the database `name` (a throwaway one)."""
    from urllib.parse import urlparse, urlunparse

    from django.db import connection

    if connection.vendor == "postgresql":
        return urlunparse(urlparse(os.environ["DATABASE_URL"])._replace(path=f"/{name}"))
    return f"sqlite:///{name}"


def process_trees(pids: list[int]) -> list:
    """These processes and everything they started (a worker's pool, zygote and sandboxes;
    a web server's workers), as psutil processes; those gone meanwhile are left out."""
    import psutil

    found = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            found += [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
    return found


def verdict(broken: list[str]) -> int:
    """Print each broken bound; the exit status of the bench."""
    for problem in broken:
        print(f"  BOUND BROKEN: {problem}")
    print("  within bounds" if not broken else "")
    return 1 if broken else 0
