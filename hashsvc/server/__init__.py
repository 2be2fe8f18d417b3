"""The gRPC server: thin servicers over the scanner and the store."""
