"""KServe v2 (Open Inference Protocol) serving over gRPC and REST, with micro-batching."""
