"""Secure defaults: remote code off unless recipe and operator both allow it, identifiers that
cannot escape their directories, safe YAML, no shell, the request gate (API keys compared in
constant time, bounded bodies, bounded admission), locked-down manifests."""

from __future__ import annotations

import ast
import asyncio
import hmac
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY

from aim_runtime import settings
from aim_runtime.checkpoint.facts import load_model_facts
from aim_runtime.errors import OverrideError, RecipeError
from aim_runtime.hardware import detect
from aim_runtime.planner.catalog import Catalog, load_catalog, load_recipe_file
from aim_runtime.planner.overrides import collect_overrides
from aim_runtime.planner.plan import make_plan
from aim_runtime.serving import protocol_errors
from aim_runtime.serving.gate import GateSettings, GateState, RequestGate
from aim_runtime.serving.paths import OPENAI_PREFIX
from testkit import MODELS, PACKAGE, REPO, write

MODEL = MODELS / "deepseek-v3"  # ships custom code (auto_map)


def catalog_allowing_remote_code(tmp_path: Path) -> Catalog:
    write(tmp_path / "r.yaml", """
        model: {architectures: [DeepseekV3ForCausalLM]}
        gpu_products: [MI300X]
        recipes:
          - {id: trusting, precision: fp8, tensor_parallel_size: 8, trust_remote_code: true}
        """)
    return load_catalog([tmp_path])


@pytest.mark.parametrize(("recipe_allows", "operator_allows", "expected"), [
    (False, False, False), (False, True, False), (True, False, False), (True, True, True)])
def test_remote_code_runs_only_when_recipe_and_operator_allow_it(
        tmp_path, recipe_allows, operator_allows, expected):
    catalog = catalog_allowing_remote_code(tmp_path) if recipe_allows else \
        Catalog(recipes=(), directories=())
    env = {"AIM_TRUST_REMOTE_CODE": "true"} if operator_allows else {}
    plan = make_plan(detect(simulate="MI300X:8", environ={}), load_model_facts(MODEL), catalog,
                     collect_overrides({}, env))
    assert plan.engine_args["trust_remote_code"] is expected


@pytest.mark.parametrize("value", ["../../etc/passwd", "/etc/passwd", "a/b", ".hidden", ""])
def test_recipe_ids_from_outside_cannot_name_paths(value):
    if not value:
        assert collect_overrides({}, {"AIM_RECIPE_ID": value}).recipe_id is None
        return
    with pytest.raises(OverrideError, match="expected a recipe id"):
        collect_overrides({}, {"AIM_RECIPE_ID": value})


def test_recipe_ids_in_files_are_plain_names(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "model: {}\ngpu_products: [CPU]\nrecipes:\n  - {id: ../escape, precision: bf16}\n")
    with pytest.raises(RecipeError, match=r"recipes\[0\]\.id: String should match pattern"):
        load_recipe_file(tmp_path / "r.yaml")


def test_yaml_tags_that_construct_objects_are_refused(tmp_path):
    (tmp_path / "evil.yaml").write_text("!!python/object/apply:os.system ['echo owned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe_file(tmp_path / "evil.yaml")


def calls_in_package() -> list[tuple[Path, str, ast.Call]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                found.append((path, ast.unparse(node.func), node))
    return found


def test_no_unsafe_yaml_no_shell_no_eval_in_the_runtime():
    """Only the multi-node module runs a program, and only the `ray` CLI, without a shell."""
    ray_calls = 0
    for path, name, call in calls_in_package():
        if name == "yaml.load":  # only with a safe loader
            assert ast.unparse(call.keywords[0].value) == "SAFE_LOADER", path
            continue
        assert name not in ("yaml.unsafe_load", "eval", "exec", "os.system", "os.popen",
                            "subprocess.call", "subprocess.check_output"), (path, name)
        assert not any(k.arg == "shell" for k in call.keywords), (path, name)
        if name in ("subprocess.run", "subprocess.Popen"):
            assert path.name == "cluster.py", (path, name)
            assert ast.unparse(call.args[0]).startswith("ray_command("), ast.unparse(call)
            ray_calls += 1
    assert ray_calls >= 3
    imports = {(path.name, alias.name) for path in PACKAGE.rglob("*.py")
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Import | ast.ImportFrom)
               for alias in node.names}
    assert {path for path, name in imports if name == "subprocess"} == {"cluster.py"}
    assert not any(name == "pickle" for _, name in imports)


# --- the request gate, driven in-process in front of a stand-in app ------------------------------

OPENAI = OPENAI_PREFIX  # where the server mounts vLLM's OpenAI application
KEYS = "old-key, new-key"  # AIM_API_KEY during a rotation
UNAUTHORIZED = "missing or invalid API key (Authorization: Bearer <key>)"


class StandIn:
    """The app behind the gate: records what reached it; optionally holds POST requests until
    released, to have some in flight."""

    def __init__(self, hold: bool = False) -> None:
        self.received: list[tuple[str, str, bytes]] = []
        self.hold = hold
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope, receive, send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.received.append((scope["method"], scope["path"], body))
        self.entered.set()
        if self.hold and scope["method"] == "POST":
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"served"})


def gated(app, *, keys: str = "", max_request_bytes: int = 1024, max_queued: int | None = None,
          capacity: int | None = None) -> RequestGate:
    """The gate as the server installs it, its keys read from AIM_API_KEY like start-up does."""
    gate_settings = GateSettings(api_keys=settings.API_KEY.read({"AIM_API_KEY": keys}),
                                 max_request_bytes=max_request_bytes, max_queued=max_queued)
    return RequestGate(app, settings=gate_settings,
                       state=GateState(engine_capacity=lambda: capacity))


def client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://aim")


def send(app, method: str, path: str, **kwargs) -> httpx.Response:
    async def go() -> httpx.Response:
        async with client(app) as http:
            return await http.request(method, path, **kwargs)
    return asyncio.run(go())


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("aim_requests_rejected_total", {"reason": reason}) or 0.0


@pytest.mark.parametrize("authorization", ["Bearer old-key", "Bearer new-key", "bearer new-key",
                                           "Bearer  new-key "])
def test_any_configured_key_passes_the_gate(authorization):
    app = StandIn()
    response = send(gated(app, keys=KEYS), "POST", "/openai/v1/completions", content=b"{}",
                    headers={"Authorization": authorization})
    assert response.status_code == 200 and response.text == "served"
    assert app.received == [("POST", "/openai/v1/completions", b"{}")]


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-key", "Bearer old-key,new-key",
                                           "Bearer", "Bearer ", "Basic old-key", "old-key",
                                           "Token new-key", "Bearer new-keyX"])
def test_a_missing_or_wrong_key_is_401_in_the_protocols_shape(authorization):
    headers = {"Authorization": authorization} if authorization is not None else {}
    app = StandIn()
    before = rejected("unauthorized")
    openai = send(gated(app, keys=KEYS), "POST", "/openai/v1/chat/completions", content=b"{}",
                  headers=headers)
    assert openai.status_code == 401
    assert openai.headers["www-authenticate"] == "Bearer"
    assert openai.json() == {"error": {"message": UNAUTHORIZED, "type": "AuthenticationError",
                                       "param": None, "code": 401}}
    kserve = send(gated(app, keys=KEYS), "POST", "/v2/models/tiny/infer", content=b"{}",
                  headers=headers)
    assert kserve.status_code == 401
    assert kserve.json() == {"error": UNAUTHORIZED}
    listing = send(gated(app, keys=KEYS), "GET", "/openai/v1/models", headers=headers)
    assert listing.status_code == 401  # reads need the key too, not only inference
    assert app.received == []
    assert rejected("unauthorized") == before + 3


@pytest.mark.parametrize("path", ["/v2/health/live", "/v2/health/ready", "/v2/models/x/ready",
                                  "/metrics", "/"])
def test_probes_and_metrics_need_no_key(path):
    app = StandIn()
    response = send(gated(app, keys=KEYS), "GET", path)
    assert response.status_code == 200
    assert app.received == [("GET", path, b"")]


@pytest.mark.parametrize("path", ["/v2/health/live/x", "/v2/models/x/ready/y",
                                  "/v2/models/a/b/ready", "/metrics/x", "/metricsx",
                                  "/v2/models/x", "/v2/health", "/x/v2/health/live"])
def test_paths_that_only_resemble_open_ones_need_the_key(path):
    app = StandIn()
    assert send(gated(app, keys=KEYS), "GET", path).status_code == 401
    assert app.received == []


def test_websockets_need_the_key_too():
    """vLLM's realtime routes are websockets: without the key the handshake is refused."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("served")
        await websocket.close()

    app = gated(Starlette(routes=[WebSocketRoute("/openai/v1/realtime", echo)]), keys=KEYS)
    before = rejected("unauthorized")
    with pytest.raises(WebSocketDisconnect) as refused, \
            TestClient(app).websocket_connect("/openai/v1/realtime"):
        pass
    assert refused.value.code == 1008 and rejected("unauthorized") == before + 1
    with TestClient(app).websocket_connect("/openai/v1/realtime",
                                           headers={"Authorization": "Bearer new-key"}) as ws:
        assert ws.receive_text() == "served"


def test_without_keys_the_gate_lets_everyone_in():
    app = StandIn()
    response = send(gated(app), "POST", "/openai/v1/completions", content=b"{}")
    assert response.status_code == 200 and len(app.received) == 1


def test_every_key_is_compared_with_compare_digest_even_after_a_match(monkeypatch):
    """Constant time: each configured key goes through hmac.compare_digest, with no early exit
    that would tell by timing which key (or how much of it) matched."""
    compared: list[bytes] = []
    real = hmac.compare_digest

    def recording(a, b):
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(protocol_errors.hmac, "compare_digest", recording)
    app = StandIn()
    response = send(gated(app, keys="first, second, third"), "POST", "/v2/models/m/infer",
                    content=b"{}", headers={"Authorization": "Bearer first"})
    assert response.status_code == 200
    assert compared == [b"first", b"second", b"third"]


def chunks(*parts: bytes):
    async def stream():
        for part in parts:
            yield part
    return stream()


@pytest.mark.parametrize(("parts", "served"), [
    ((b"x" * 16,), True), ((b"x" * 8, b"x" * 8), True),
    ((b"x" * 17,), False), ((b"x" * 10, b"x" * 10), False)])
def test_bodies_over_the_limit_are_413_before_the_app_sees_them(parts, served):
    app = StandIn()
    before = rejected("too_large")
    for path in ("/openai/v1/completions", "/v2/models/tiny/generate"):
        response = send(gated(app, max_request_bytes=16), "POST", path, content=chunks(*parts))
        if served:
            assert response.status_code == 200
            assert app.received[-1] == ("POST", path, b"".join(parts))  # whole body replayed
            continue
        assert response.status_code == 413
        message = "request body larger than 16 bytes"
        assert response.json() == ({"error": {"message": message, "type": "RequestTooLarge",
                                              "param": None, "code": 413}}
                                   if path.startswith(OPENAI) else {"error": message})
    assert len(app.received) == (2 if served else 0)
    assert rejected("too_large") == before + (0 if served else 2)


def test_over_capacity_is_503_with_retry_after_at_once():
    """Capacity 1 and nothing queued: one request in flight, the next is refused at once, in
    the protocol's shape; once the first finishes there is room again."""

    async def scenario() -> None:
        app = StandIn(hold=True)
        front = gated(app, capacity=1, max_queued=0)
        before = rejected("overload")
        async with client(front) as http:
            first = asyncio.create_task(http.post("/openai/v1/completions", content=b"1"))
            await asyncio.wait_for(app.entered.wait(), 10)
            assert front.state.in_flight == 1
            busy = await asyncio.wait_for(http.post("/openai/v1/completions", content=b"2"), 10)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
            error = busy.json()["error"]
            assert (error["type"], error["code"], error["param"]) == (
                "ServiceUnavailableError", 503, None)
            assert "1 requests in flight (limit 1)" in error["message"]
            v2 = await asyncio.wait_for(http.post("/v2/models/tiny/infer", content=b"3"), 10)
            assert v2.status_code == 503 and v2.headers["retry-after"] == "1"
            assert v2.json() == {"error": error["message"]}
            # Reads are not admissions: the model listing still answers.
            assert (await http.get("/openai/v1/models")).status_code == 200
            app.release.set()
            assert (await asyncio.wait_for(first, 10)).status_code == 200
            assert front.state.in_flight == 0
            again = await http.post("/v2/models/tiny/infer", content=b"4")
            assert again.status_code == 200
        assert [body for method, _, body in app.received if method == "POST"] == [b"1", b"4"]
        assert rejected("overload") == before + 2

    asyncio.run(scenario())


def test_queue_defaults_to_the_engine_capacity_and_no_engine_means_no_limit():
    async def admitted(capacity: int | None, requests: int) -> list[int]:
        app = StandIn(hold=True)
        front = gated(app, capacity=capacity)
        async with client(front) as http:
            tasks = []
            for index in range(requests):
                task = asyncio.create_task(
                    http.post("/v2/models/tiny/generate", content=str(index).encode()))
                tasks.append(task)
                # Until it is either held by the app (admitted) or answered (refused).
                while len(app.received) + sum(t.done() for t in tasks) < len(tasks):
                    await asyncio.sleep(0.001)
            refused = sum(task.done() for task in tasks)
            app.release.set()
            statuses = [(await task).status_code for task in tasks]
        assert refused == statuses.count(503)  # refused at once, not after the others ended
        return statuses

    # capacity 2 + 2 queued (max_queued unset: as many as the engine runs at once)
    assert asyncio.run(asyncio.wait_for(admitted(2, 5), 10)) == [200, 200, 200, 200, 503]
    # engine not loaded yet: no bound here
    assert asyncio.run(asyncio.wait_for(admitted(None, 6), 10)) == [200] * 6


def test_network_policy_admits_only_gateways_prometheus_and_validate():
    policy = yaml.safe_load((REPO / "manifests" / "networkpolicy.yaml").read_text())
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    sources = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    namespaces = {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                  for p in sources if "namespaceSelector" in p}
    assert namespaces == {"istio-system", "envoy-gateway-system", "knative-serving",
                          "monitoring"}
    # and, from this namespace, `aim-runtime validate`'s pods only (manifests/validate-job.yaml)
    assert [p for p in sources if "namespaceSelector" not in p] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "aim-validate"}}}]
    runtime = yaml.safe_load((REPO / "serving_runtimes" / "aim-runtime.yaml").read_text())
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= \
        runtime["spec"]["labels"].items()


def test_multinode_policy_opens_all_ports_only_between_the_pods_of_one_service():
    policy = yaml.safe_load((REPO / "manifests" / "multinode" / "networkpolicy.yaml").read_text())
    isvc = yaml.safe_load(
        (REPO / "manifests" / "multinode" / "inferenceservice-405b-2x8.yaml").read_text())
    own = {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
    assert policy["spec"]["podSelector"]["matchLabels"] == own
    for rule in policy["spec"]["ingress"]:
        peers = rule["from"]
        if "ports" not in rule:  # every port: only from the same InferenceService's pods
            assert peers == [{"podSelector": {"matchLabels": own}}]
        else:
            assert [p["port"] for p in rule["ports"]] == [8080]
            assert all("namespaceSelector" in peer for peer in peers)


def test_every_pod_in_the_manifests_runs_as_non_root():
    for path in (REPO / "manifests").rglob("*.yaml"):
        for document in yaml.safe_load_all(path.read_text()):
            if not document or document.get("kind") not in ("InferenceService", "Job"):
                continue
            spec = document["spec"]
            pods = [spec["template"]["spec"]] if document["kind"] == "Job" else \
                [spec["predictor"]] + [c["predictor"] for c in spec.get("canary", [])]
            if "workerSpec" in spec.get("predictor", {}):
                pods.append(spec["predictor"]["workerSpec"])
            for pod in pods:
                assert pod["securityContext"]["runAsNonRoot"] is True, path
