"""The HTTP gateway: multipart uploads from web and mobile clients in, gRPC calls to the services out."""
