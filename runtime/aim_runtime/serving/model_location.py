"""Where the model to serve is: a local directory (`--model_dir`, or `--model_id` naming one), a
Hugging Face id (its config.json fetched for planning; vLLM fetches the weights), or, given
neither, the embedded default model."""

from __future__ import annotations

import logging
from pathlib import Path

from aim_runtime import settings
from aim_runtime.errors import AimError
from aim_runtime.serving.phases import phase

log = logging.getLogger("aim_runtime")


def model_location(model_dir: str | None, model_id: str | None) -> tuple[Path, str]:
    """(directory holding config.json, what vLLM loads): a local directory for both, or for a
    Hugging Face id the downloaded config and the id (vLLM fetches the weights itself)."""
    if model_dir:
        return Path(model_dir), str(model_dir)
    if model_id and Path(model_id).is_dir():
        return Path(model_id), str(model_id)
    if model_id:
        with phase("fetch_config"):
            return hub_config_dir(model_id), model_id
    with phase("default_model"):
        if settings.DEFAULT_MODEL.read() == "tiny":
            from aim_runtime.checkpoint import tiny_model

            directory = tiny_model.ensure_default_model()
            log.info("no --model_dir: serving the tiny random model at %s (AIM_DEFAULT_MODEL="
                     "tiny: its text is gibberish by construction)", directory)
        else:
            from aim_runtime.checkpoint import default_model

            directory = default_model.ensure_default_model()
            log.info("no --model_dir: serving the embedded default model, %s (135M parameters, "
                     "Apache-2.0) at %s", default_model.HF_ID, directory)
    return directory, str(directory)


def hub_config_dir(model_id: str) -> Path:
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model_id, "config.json")).parent
    except Exception as exc:  # offline, unknown repo, gated without HF_TOKEN...
        raise AimError(
            f"--model_id {model_id}: cannot fetch its config.json from the Hugging Face hub "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
            "give a local directory with --model_dir (in KServe: storageUri, which fills "
            "/mnt/models), or set HF_TOKEN for gated models",
        ) from exc
