"""Debian's `prometheus` package, fetched and unpacked into the user's cache on first use (no
service starts): its `promtool` checks and unit-tests the alert rules. A machine without it
fails the tests that need it rather than skipping them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "aim-runtime" / \
    "prometheus"


def binary(name: str = "promtool") -> Path:
    """/usr/bin/<name> from the unpacked package, fetched with `apt-get download` if absent."""
    found = CACHE / "usr" / "bin" / name
    if found.is_file():
        return found
    CACHE.mkdir(parents=True, exist_ok=True)
    download = ["apt-get", "download", "prometheus"]
    if subprocess.run(download, cwd=CACHE, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=600)
        subprocess.run(download, cwd=CACHE, check=True, capture_output=True, timeout=600)
    (package,) = sorted(CACHE.glob("prometheus_*.deb"))[-1:]
    subprocess.run(["dpkg-deb", "-x", str(package), str(CACHE)], check=True, timeout=300)
    return found


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary()), *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)
