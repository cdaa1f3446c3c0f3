"""Storage node: shard files, records and the node RPC server."""
