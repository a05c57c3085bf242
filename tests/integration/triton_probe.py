"""Talk to a KServe v2 server with the stock tritonclient (gRPC and HTTP); print JSON.

Run in its own process: tritonclient's protos register the same ``inference.*`` message
names as edgeai's, and one protobuf registry cannot hold both.

    python tests/integration/triton_probe.py GRPC_ADDR HTTP_ADDR MODEL INPUTS.npz [--token T]

``INPUTS.npz`` holds ``x`` (float: sent as FP32; integer: as INT64); the printed object
has the server's answers and both clients' predictions as nested lists.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def _status(call: Any) -> dict[str, Any]:
    try:
        call()
    except InferenceServerException as exc:
        return {"status": str(exc.status()), "message": exc.message()}
    return {"status": "ok"}


def probe(grpc_addr: str, http_addr: str, model: str, x: np.ndarray, token: str | None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    g = grpcclient.InferenceServerClient(grpc_addr)
    h = httpclient.InferenceServerClient(http_addr)
    out: dict[str, Any] = {}
    out["grpc_live"] = g.is_server_live(headers=headers)
    out["grpc_ready"] = g.is_server_ready(headers=headers)
    out["grpc_model_ready"] = g.is_model_ready(model, headers=headers)
    out["http_live"] = h.is_server_live(headers=headers)
    out["http_ready"] = h.is_server_ready(headers=headers)
    out["http_model_ready"] = h.is_model_ready(model, headers=headers)
    out["grpc_server_metadata"] = g.get_server_metadata(headers=headers, as_json=True)
    out["grpc_model_metadata"] = g.get_model_metadata(model, headers=headers, as_json=True)
    out["http_server_metadata"] = h.get_server_metadata(headers=headers)
    out["http_model_metadata"] = h.get_model_metadata(model, headers=headers)
    meta = out["http_model_metadata"]
    in_name, out_name = meta["inputs"][0]["name"], meta["outputs"][0]["name"]

    kind = "INT64" if x.dtype == np.int64 else "FP32"
    gi = grpcclient.InferInput(in_name, list(x.shape), kind)
    gi.set_data_from_numpy(x)  # raw_input_contents
    gr = g.infer(model, [gi], outputs=[grpcclient.InferRequestedOutput(out_name)], headers=headers)
    out["grpc_outputs"] = gr.as_numpy(out_name).tolist()
    out["grpc_version"] = gr.get_response(as_json=True)["model_version"]

    hi = httpclient.InferInput(in_name, list(x.shape), kind)
    hi.set_data_from_numpy(x, binary_data=False)
    ho = httpclient.InferRequestedOutput(out_name, binary_data=False)
    hr = h.infer(model, [hi], outputs=[ho], headers=headers)
    out["http_outputs"] = hr.as_numpy(out_name).tolist()
    out["http_version"] = hr.get_response()["model_version"]

    out["grpc_unknown_model"] = _status(lambda: g.infer("nope", [gi], headers=headers))
    out["http_unknown_model"] = _status(lambda: h.infer("nope", [hi], headers=headers))
    bad = grpcclient.InferInput(in_name, [1, 2, 3], kind)
    bad.set_data_from_numpy(np.zeros((1, 2, 3), x.dtype))
    out["grpc_bad_shape"] = _status(lambda: g.infer(model, [bad], headers=headers))
    out["grpc_no_token"] = _status(lambda: g.get_model_metadata(model))
    g.close()
    h.close()
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("grpc")
    parser.add_argument("http")
    parser.add_argument("model")
    parser.add_argument("inputs")
    parser.add_argument("--token")
    args = parser.parse_args()
    with np.load(args.inputs) as data:
        x = data["x"]  # float32 pixels, or int64 token ids (sent as INT64)
        x = np.ascontiguousarray(x, dtype=np.int64 if x.dtype.kind in "iu" else np.float32)
    json.dump(probe(args.grpc, args.http, args.model, x, args.token), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
