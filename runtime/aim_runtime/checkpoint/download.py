"""Download a model into a directory (a model-cache PVC) and verify it before anyone serves it.

Verification, without loading weights: config.json parses into model facts; every shard the
safetensors index names is present; every safetensors file is complete (its size is exactly the
8-byte length, the header and the end of the last tensor); and, when the hub's file list carries
them, each file's SHA-256 matches. The result is written to `aim-verified.json` next to the model.
With `--gpu`, the planner must also find a plan for it, so a cache is never filled with a model
that does not fit the GPUs it is meant for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from pathlib import Path
from typing import Any

from aim_runtime.checkpoint.facts import load_model_facts
from aim_runtime.checkpoint.parameters import read_safetensors_header
from aim_runtime.errors import AimError, ModelFactsError

log = logging.getLogger(__name__)

MANIFEST = "aim-verified.json"
# What vLLM needs; other weight formats (.bin, .pth, .gguf, original/) are skipped.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt",
                  "*.jinja", "*.py", "adapter_model.bin"]
HASH_CHUNK_BYTES = 16 * 1024 * 1024


def download(model_id: str, dest: Path,
             revision: str | None = None) -> tuple[str, dict[str, str]]:
    """Fetch the model's files into `dest`; return (commit sha, {file: sha256 from the hub})."""
    try:
        from huggingface_hub import HfApi, snapshot_download

        info = HfApi().model_info(model_id, revision=revision, files_metadata=True)
        snapshot_download(model_id, revision=info.sha, local_dir=dest,
                          allow_patterns=ALLOW_PATTERNS)
    except Exception as exc:  # network, auth (gated models need HF_TOKEN), unknown repo
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AimError(f"cannot download {model_id}: {first_line}",
                       "check network access to huggingface.co and HF_TOKEN for gated "
                       "models") from exc
    hub_hashes = {s.rfilename: s.lfs.sha256 for s in info.siblings or []
                  if getattr(s, "lfs", None) and getattr(s.lfs, "sha256", None)}
    return info.sha, hub_hashes


def verify(model_dir: Path, expected_sha256: dict[str, str] | None = None) -> dict[str, Any]:
    """Check the directory as the module describes; raise AimError listing every problem."""
    problems: list[str] = []
    try:
        facts = load_model_facts(model_dir)
    except ModelFactsError as exc:
        raise AimError(f"{model_dir}: {exc.message}") from exc
    shards = sorted(model_dir.glob("*.safetensors"))
    problems += _missing_indexed_shards(model_dir)
    files: dict[str, dict[str, Any]] = {}
    for shard in shards:
        problem = _incomplete(shard)
        if problem:
            problems.append(problem)
            continue
        digest = sha256(shard) if expected_sha256 else None
        expected = (expected_sha256 or {}).get(shard.name)
        if expected and digest != expected:
            problems.append(f"{shard.name}: SHA-256 {digest} differs from the hub's {expected}")
        files[shard.name] = {"bytes": shard.stat().st_size, "sha256": digest}
    if not shards:
        problems.append("no *.safetensors weights (vLLM loads safetensors)")
    if problems:
        raise AimError(f"{model_dir} failed verification:\n  " + "\n  ".join(problems),
                       "download again; a partial copy must not be served")
    return {"architecture": facts.architecture, "parameters": facts.parameters.total,
            "checkpoint_bytes": facts.checkpoint_bytes, "files": files}


def verify_adapter(adapter_dir: Path, expected_sha256: dict[str, str] | None = None,
                   base: Path | None = None, max_rank: int = 512) -> dict[str, Any]:
    """A LoRA adapter directory: its config and weights (checksums against the hub's), and,
    given the base model's directory, that it was made for that model."""
    from aim_runtime.checkpoint.lora import adapter_problem, read_adapter

    try:
        adapter = read_adapter(adapter_dir)
    except ValueError as exc:
        raise AimError(f"{adapter_dir} failed verification: {exc}") from exc
    problems = []
    if base is not None:
        problem = adapter_problem(adapter_dir, load_model_facts(base), max_rank)
        if problem:
            problems.append(problem)
    files: dict[str, dict[str, Any]] = {}
    for weights in sorted(adapter_dir.glob("adapter_model.*")):
        digest = sha256(weights)
        expected = (expected_sha256 or {}).get(weights.name)
        if expected and digest != expected:
            problems.append(f"{weights.name}: SHA-256 {digest} differs from the hub's {expected}")
        files[weights.name] = {"bytes": weights.stat().st_size, "sha256": digest}
    if problems:
        raise AimError(f"{adapter_dir} failed verification:\n  " + "\n  ".join(problems))
    return {"adapter": {"rank": adapter.rank, "target_modules": list(adapter.target_modules),
                        "base_model": adapter.base_model}, "files": files}


def write_manifest(model_dir: Path, summary: dict[str, Any]) -> Path:
    path = model_dir / MANIFEST
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _missing_indexed_shards(model_dir: Path) -> list[str]:
    problems = []
    for index in model_dir.glob("*.safetensors.index.json"):
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            problems.append(f"{index.name}: unreadable index ({exc})")
            continue
        for shard in sorted(set(weight_map.values())):
            if not (model_dir / shard).is_file():
                problems.append(f"{shard}: named by {index.name} but missing")
    return problems


def _incomplete(shard: Path) -> str | None:
    try:
        header = read_safetensors_header(shard)
        with shard.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
    except (ModelFactsError, OSError, struct.error) as exc:
        return f"{shard.name}: {exc}"
    data_end = max((info["data_offsets"][1] for info in header.values()), default=0)
    expected = 8 + header_len + data_end
    actual = shard.stat().st_size
    if actual != expected:
        return f"{shard.name}: {actual} bytes on disk, {expected} expected (truncated or padded)"
    return None
