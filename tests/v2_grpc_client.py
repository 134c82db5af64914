"""Triton's gRPC v2 client (`tritonclient.grpc`) against a server, run as its own process: its
protobuf descriptors share the `inference` package with KServe's, and both cannot be loaded into
one interpreter. Prints one JSON object: each call's outcome (a value, or the error's status)."""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException


def main(address: str, key: str) -> None:
    client = grpcclient.InferenceServerClient(address)

    def auth() -> dict[str, str]:
        return {"authorization": f"Bearer {key}"}

    def inputs() -> list:
        text = grpcclient.InferInput("text_input", [2], "BYTES")
        text.set_data_from_numpy(np.array([b"Hello there", b"Once upon"], dtype=np.object_))
        return [text]

    calls = {
        "live": lambda: client.is_server_live(),
        "ready": lambda: client.is_server_ready(),
        "model_ready": lambda: client.is_model_ready("tiny"),
        "infer": lambda: [t.decode() for t in client.infer(
            "tiny", inputs(), outputs=[grpcclient.InferRequestedOutput("text_output")],
            parameters={"max_tokens": 4, "temperature": 0.0}, headers=auth(),
        ).as_numpy("text_output")],
        "infer_keyless": lambda: client.infer("tiny", inputs()),
        "infer_wrong_key": lambda: client.infer("tiny", inputs(),
                                                headers={"authorization": "Bearer no"}),
        "metadata_keyless": lambda: client.get_model_metadata("tiny"),
        "server_metadata_keyless": lambda: client.get_server_metadata(),
        "metadata": lambda: client.get_model_metadata("tiny", headers=auth()).inputs[0].name,
        "invalid": lambda: client.infer("tiny", inputs(), parameters={"temperature": "hot"},
                                        headers=auth()),
        "absent": lambda: client.infer("absent", inputs(), headers=auth()),
        "unload": lambda: client.unload_model("tiny", headers=auth()),
        "ready_after": lambda: client.is_model_ready("tiny"),
    }
    outcomes = {}
    for name, call in calls.items():
        try:
            outcomes[name] = {"value": call()}
        except InferenceServerException as error:
            outcomes[name] = {"status": error.status(), "message": error.message()}
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
