"""Docker HEALTHCHECK for any `flywheel` verb: healthy when the process's /healthz answers 200.

One image runs serving (8000), feedback (8001) or the trainer (9300); FLYWHEEL_PORT, when set,
names the port, otherwise the defaults are tried in turn. Standard library only.
"""

import os
import sys
import urllib.error
import urllib.request

DEFAULT_PORTS = ("8000", "8001", "9300")


def healthy(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=4) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def main() -> int:
    configured = os.environ.get("FLYWHEEL_PORT")
    ports = (configured,) if configured else DEFAULT_PORTS
    return 0 if any(healthy(port) for port in ports) else 1


if __name__ == "__main__":
    sys.exit(main())
