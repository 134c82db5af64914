"""KServe's data plane and model registry, as an LLM runtime needs them: probes that follow the
engine (and, with several API server processes, the pod), LoRA adapters served as models, and v2
requests whose framing is wrong answered 400."""

from __future__ import annotations

import struct
from typing import Any

from kserve.errors import InferenceError, InvalidInput, ServerNotReady
from kserve.model_repository import ModelRepository
from kserve.protocol.dataplane import DataPlane

from aim_runtime.serving.api_server_group import GroupMember
from aim_runtime.serving.lifecycle import EngineLifecycle
from aim_runtime.serving.model import AimModel


class NotReady(ServerNotReady):
    """Readiness 503 with a machine-readable reason (loading, warming, starting, draining,
    stalled, dead)."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(detail or reason)
        self.reason = reason


class AimModelRepository(ModelRepository):
    """KServe's registry, where each LoRA adapter loaded now is the model under its own name
    (v2 infer, ready and metadata at /v2/models/<adapter>/...)."""

    def __init__(self, model: AimModel) -> None:
        super().__init__()
        self.aim_model = model

    def get_model(self, name: str) -> Any:
        found = super().get_model(name)
        if found is None and name in self.aim_model.adapter_names():
            return self.aim_model
        return found


class AimDataPlane(DataPlane):
    """Liveness and readiness that follow the engine, and with several API server processes
    the pod's: ready once every process is, dead once any process died."""

    def __init__(self, model_registry: Any, lifecycle: EngineLifecycle,
                 member: GroupMember | None = None) -> None:
        super().__init__(model_registry=model_registry)
        self.lifecycle = lifecycle
        self.member = member

    def decode_inference_request(self, body: Any, headers: Any, model_name: str) -> Any:
        """KServe's decoding of a v2 request, binary framing (`Inference-Header-Content-Length`)
        included. What the framing or its JSON part gets wrong is the client's: a 400 naming
        it, where KServe's decoder let KeyError, AttributeError, struct.error or
        UnicodeDecodeError through, and InferenceError for BYTES that are not UTF-8, as 500s."""
        try:
            return super().decode_inference_request(body, headers, model_name)
        except InvalidInput:
            raise
        except InferenceError as exc:  # KServe's word for BYTES that are not UTF-8
            raise InvalidInput(str(exc)) from exc
        except KeyError as exc:
            raise InvalidInput(f"v2 request: an input lacks the field {exc}") from exc
        except (AttributeError, TypeError, ValueError, IndexError, struct.error) as exc:
            raise InvalidInput(f"v2 request does not decode: {exc}") from exc

    def state(self) -> str:
        """Readiness in one word, for aim_state: ready, or the reason the probe answers 503."""
        if self.member is not None and self.member.group_failed:
            return "dead"
        reason = self.lifecycle.not_ready_reason()
        if reason != "unhealthy":  # healthy() is what says unhealthy; here: all is in place
            return reason
        peers = self.member
        if peers is not None and peers.ready_count() < peers.count:
            return "starting"
        return "ready"

    async def live(self) -> dict[str, str]:
        failed = self.member is not None and self.member.group_failed
        return {"status": "dead" if self.lifecycle.dead or failed else "alive"}

    async def ready(self) -> bool:
        if not await self.lifecycle.healthy():
            raise NotReady(self.lifecycle.not_ready_reason())
        peers = self.member
        if peers is not None and peers.ready_count() < peers.count:
            raise NotReady("starting", f"{peers.ready_count()} of {peers.count} API server "
                                       "processes ready")
        return True
