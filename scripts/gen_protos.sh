#!/usr/bin/env bash
# Regenerate the KServe v2 gRPC stubs in edgeai/serving/_proto from grpc_predict_v2.proto.
# The generated files are committed (an inference-only device has no grpcio-tools).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
# Generate with the package path as the proto root's parent so the _pb2_grpc module imports
# its _pb2 sibling as edgeai.serving._proto.grpc_predict_v2_pb2 (not a top-level module).
"$PY" -m grpc_tools.protoc \
  --proto_path=. \
  --python_out=. \
  --grpc_python_out=. \
  --pyi_out=. \
  edgeai/serving/_proto/grpc_predict_v2.proto
touch edgeai/serving/_proto/__init__.py
echo "generated edgeai/serving/_proto/grpc_predict_v2_pb2{,_grpc}.py"
