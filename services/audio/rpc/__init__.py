"""The audio service's wire side: the RPC handlers (streaming VAD, clip encoding), request checks and reply
messages. Only this package and `server.py` know gRPC and protobuf; the engine and models never do."""
