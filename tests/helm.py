"""Every call to Helm, in one place: the helm-python-sdk package (Helm v4 compiled in) renders,
validates values against a chart's values.schema.json, lints, packages and dry-runs an install,
offline. A `helm` binary could stand in here without touching the tests.

What the package does not do, found by trying: lint does not fail on `fail`/`required` (render
does); `kubeVersion` is enforced only by the install; capabilities default to a recent
Kubernetes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from helm_python import Chart, Config, HelmError
from helm_python import lint as helm_lint
from helm_python import package as helm_package

__all__ = ["HelmError", "dry_run_install", "lint", "objects", "package", "render", "schema_error"]


def render(chart: Path, values: dict[str, Any] | None = None, name: str = "aim",
           namespace: str = "default") -> dict[str, str]:
    """Template path -> rendered text, as `helm template` writes them (NOTES.txt included)."""
    return Chart.load(chart).render(values or {}, name=name, namespace=namespace,
                                    is_install=True)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """The Kubernetes objects of a render, in template order."""
    return [document for path, text in sorted(rendered.items()) if path.endswith(".yaml")
            for document in yaml.safe_load_all(text) if document]


def schema_error(chart: Path, values: dict[str, Any]) -> str | None:
    """What values.schema.json says of `values` merged over the chart's defaults (None: valid)."""
    loaded = Chart.load(chart)
    try:
        loaded.validate_schema(loaded.merge_values(values))
    except HelmError as error:
        return str(error)
    return None


def lint(chart: Path, values: dict[str, Any] | None = None) -> list[str]:
    """`helm lint --strict`: the warnings and errors (information is not a finding)."""
    report = helm_lint(chart, values, strict=True)
    return [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2] + \
        list(report.get("errors") or [])


def package(chart: Path, destination: Path) -> Path:
    """`helm package`: the chart's archive."""
    return Path(helm_package(chart, destination=destination))


def dry_run_install(chart: Path | str, values: dict[str, Any] | None = None,
                    name: str = "aim", namespace: str = "default") -> str:
    """`helm install --dry-run=client`: the manifest an install would apply (kubeVersion checked
    against the client's default capabilities); raises HelmError when refused."""
    config = Config(namespace=namespace, storage_driver="memory")
    chart_arg = Chart.load(chart) if isinstance(chart, Path) else chart
    return str(config.install(chart_arg, name, values or {}, dry_run="client")["manifest"])
