"""Reference KServe V2 model server with built-in text models (see docs/grpc.md)."""
