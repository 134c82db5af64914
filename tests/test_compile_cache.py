"""Kernel and compile caches on a volume: keyed by device, versions and plan, so a changed
version or recipe misses and a stale cache is never used; filled by a run that exits after its
warm-up (the pre-fill Job); hit by the next start."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from aim_runtime import pipeline
from aim_runtime.serving.compile_cache import COMPLETE_MARKER, CompileCache, validity
from testkit import MODELS, clean_environ

VERSIONS = {"vllm": "0.32.0", "torch": "2.13.0", "aiter": "none"}


def plan_for(simulate: str, **overrides):
    request = pipeline.PlanRequest(model=MODELS / "llama-3.1-8b-instruct", simulate=simulate,
                                   cli_overrides=overrides)
    return pipeline.run(request).plan


def key(plan, versions=VERSIONS) -> str:
    return CompileCache(Path("/cache"), validity(plan, versions)).key


def test_the_key_follows_device_versions_and_plan():
    base = plan_for("MI300X:1")
    assert key(base) == key(plan_for("MI300X:1"))  # the same plan: the same directory
    assert key(base) != key(plan_for("MI355X:1"))  # another ISA
    assert key(base) != key(base, {**VERSIONS, "vllm": "0.33.0"})
    assert key(base) != key(base, {**VERSIONS, "aiter": "0.1.5"})
    assert key(base) != key(plan_for("MI300X:1", max_model_len=8192))  # another plan
    assert key(base) != key(plan_for("MI300X:1", objective="throughput"))


def test_every_cache_variable_points_into_the_keys_directory(tmp_path):
    cache = CompileCache(tmp_path, validity(plan_for("MI300X:1"), VERSIONS))
    env = cache.env()
    assert {"VLLM_CACHE_ROOT", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "AITER_JIT_DIR",
            "MIOPEN_USER_DB_PATH"} <= set(env)
    assert all(Path(value).parent == tmp_path / cache.key for value in env.values())
    cache.prepare()
    assert not cache.hit
    cache.mark_complete()
    assert cache.hit and (tmp_path / cache.key / COMPLETE_MARKER).is_file()


def cache_lines(log: str) -> list[str]:
    return re.findall(r"compile cache (hit|miss): (\S+)", log)


@pytest.mark.serving
def test_a_filled_cache_is_hit_and_a_changed_plan_misses(filled_compile_cache, server,
                                                         tiny_model):
    """The pre-fill Job's run (warm, then exit 0) misses and fills; the session's server,
    started on the same volume after it, hits."""
    ((result, directory),) = cache_lines(filled_compile_cache.log_path.read_text())
    assert result == "miss" and (Path(directory) / COMPLETE_MARKER).is_file()
    assert Path(directory, "vllm").is_dir()
    assert cache_lines(server.log_path.read_text()) == [("hit", directory)]

    # A changed plan names another directory, which the filled one does not stand in for (a
    # third start would only repeat the first one's miss; the key's parts: the unit test above).
    def cache_for(**overrides) -> CompileCache:
        request = pipeline.PlanRequest(model=tiny_model, cli_overrides=overrides,
                                       environ=clean_environ())
        return CompileCache(Path(directory).parent, validity(pipeline.run(request).plan))

    assert cache_for().key == Path(directory).name  # the served plan's key, made here
    changed = cache_for(max_model_len=1024)
    assert changed.key != Path(directory).name and not changed.hit


def test_the_prefill_job_renders_and_validates():
    """manifests/model-cache/compile-cache-job.yaml runs the runtime with --exit-after-warmup on
    the cache volume; the core schemas are checked in tests/test_kubernetes.py."""
    import yaml

    from testkit import REPO

    job = yaml.safe_load((REPO / "manifests" / "model-cache" / "compile-cache-job.yaml")
                         .read_text().split("\n---\n")[-1])
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert "--exit-after-warmup" in container["args"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert env["AIM_COMPILE_CACHE_DIR"] in mounts
    # The job plans as the service that uses its cache does: the same pins, the same key.
    service = yaml.safe_load((REPO / "manifests" / "model-cache" /
                              "inferenceservice-from-pvc.yaml").read_text())
    model = service["spec"]["predictor"]["model"]
    pins = {name: value for name, value in env.items() if name.startswith("AIM_")}
    assert {e["name"]: e["value"] for e in model["env"]} == pins
    mount = next(m for m in model["volumeMounts"] if m["mountPath"] == env[
        "AIM_COMPILE_CACHE_DIR"])
    claim = next(v for v in service["spec"]["predictor"]["volumes"] if v["name"] == mount["name"])
    job_claim = next(v for v in job["spec"]["template"]["spec"]["volumes"]
                     if v["name"] == mounts[env["AIM_COMPILE_CACHE_DIR"]])
    assert claim["persistentVolumeClaim"] == job_claim["persistentVolumeClaim"]
    result = subprocess.run([sys.executable, "-m", "aim_runtime", "serve", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert "--exit-after-warmup" in result.stdout


def test_a_multi_node_head_names_the_cache_for_its_ray_workers(tmp_path):
    from aim_runtime.serving.startup import engine_env

    plan = pipeline.run(pipeline.PlanRequest(model=MODELS / "llama-3.1-405b-instruct",
                                             simulate="MI300X:8x2")).plan
    cache = CompileCache(tmp_path, validity(plan, VERSIONS))
    env = engine_env(plan, cache.env(), lora=False)
    copied = set(env["VLLM_RAY_EXTRA_ENV_VARS_TO_COPY"].split(","))
    assert {"TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "AITER_JIT_DIR",
            "MIOPEN_USER_DB_PATH"} <= copied  # VLLM_CACHE_ROOT goes by vLLM's own prefix rule
    single = engine_env(plan_for("MI300X:1"), cache.env(), lora=False)
    assert "VLLM_RAY_EXTRA_ENV_VARS_TO_COPY" not in single


def test_multi_node_services_mount_the_cache_on_every_node(catalog):
    from aim_runtime.deploy.render import RenderRequest, render

    isvc, _ = render(RenderRequest(model=MODELS / "llama-3.1-405b-instruct", gpu="MI300X",
                                   nodes=2, storage_uri="pvc://models/405b",
                                   compile_cache_pvc="aim-compile-cache"), catalog)
    predictor = isvc["spec"]["predictor"]
    (worker,) = predictor["workerSpec"]["containers"]
    assert worker["volumeMounts"] == predictor["model"]["volumeMounts"]
    cache = [v for v in predictor["workerSpec"]["volumes"] if v["name"] == "compile-cache"]
    assert cache == [v for v in predictor["volumes"] if v["name"] == "compile-cache"]
