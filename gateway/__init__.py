"""S3 gateway: SigV4, buckets, objects, multipart and listing over the node RPC."""
