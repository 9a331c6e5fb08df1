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


def verdict(broken: list[str]) -> int:
    """Print each broken bound; the exit status of the bench."""
    for problem in broken:
        print(f"  BOUND BROKEN: {problem}")
    print("  within bounds" if not broken else "")
    return 1 if broken else 0
