"""Generated gRPC stubs for protos/credentialsfetcher.proto (tools/gen-proto.sh); do not edit."""
