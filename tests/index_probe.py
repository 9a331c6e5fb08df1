"""Whether the package index answers: the tests that build an environment need it.

Any HTTP answer counts, even an error (the index is there; what it says is the test's to
see): only a request that gets none (no DNS, no route, a refused connection, no answer
within the timeout) means the index cannot be reached.
"""

import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

PROBE_SECONDS = 5
PROBED_PROJECT = "scikit-learn"  # what the tests' environments pin (made_elsewhere.py)


def unreachable(index_url: str) -> str | None:
    """Why `index_url` cannot be reached, or None when it answers."""
    if urlsplit(index_url).scheme == "file":
        folder = Path(url2pathname(urlsplit(index_url).path))
        return None if folder.is_dir() else f"{folder} is not a folder"
    probe = urllib.request.Request(f"{index_url.rstrip('/')}/{PROBED_PROJECT}/", method="HEAD")
    try:
        urllib.request.urlopen(probe, timeout=PROBE_SECONDS).close()
    except urllib.error.HTTPError:
        return None
    except urllib.error.URLError as exc:
        return str(exc.reason)
    except OSError as exc:  # a timeout once connected
        return str(exc) or type(exc).__name__
    return None
