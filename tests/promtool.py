"""Debian's `prometheus` package, fetched and unpacked into the user's cache on first use (no
service starts): its `promtool` checks and unit-tests the alert rules, and its server scrapes a
test server with the rules loaded. A machine without it
fails the tests that need it rather than skipping them."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

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


class Prometheus:
    """The package's Prometheus server on 127.0.0.1, its data in `directory`, scraping and
    evaluating as `config` (prometheus.yml as a dict) says; queried over its HTTP API."""

    def __init__(self, directory: Path, config: dict, port: int) -> None:
        import yaml

        self.directory = directory
        self.url = f"http://127.0.0.1:{port}"
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = directory / "prometheus.log"
        self.command = [str(binary("prometheus")), "--config.file=prometheus.yml",
                        f"--storage.tsdb.path={directory / 'data'}",
                        f"--web.listen-address=127.0.0.1:{port}"]
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Prometheus:
        import httpx

        with self.log.open("w") as log:
            self.process = subprocess.Popen(self.command, cwd=self.directory, stdout=log,
                                            stderr=subprocess.STDOUT)
        for _ in range(300):
            try:
                if httpx.get(self.url + "/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        self.__exit__()
        raise RuntimeError("Prometheus did not start:\n" + self.log.read_text()[-3000:])

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def api(self, path: str, **params: str) -> Any:
        """`data` of a successful API answer; raises AssertionError with the error otherwise."""
        import httpx

        answer = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert answer["status"] == "success", answer
        return answer["data"]
