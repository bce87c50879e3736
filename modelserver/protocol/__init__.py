"""KServe V2 protocol messages and stubs generated from proto/ (see scripts/gen_proto)."""

from . import grpc_predict_v2_pb2 as pb
from . import grpc_predict_v2_pb2_grpc as pb_grpc

__all__ = ["pb", "pb_grpc"]
