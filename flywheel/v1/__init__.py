"""Generated protobuf and gRPC code for protos/flywheel/v1 (make protos)."""
