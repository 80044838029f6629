"""Who is calling and what they may do: API keys, roles and quotas, the principal passed between services,
and transport security (TLS) for gRPC."""
