"""xDS: Envoy resource names, immutable snapshots, the ADS stream state machine and its gRPC server."""
