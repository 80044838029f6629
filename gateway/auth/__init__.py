"""Who is calling the gateway and what they may do: API keys and JWTs (`credentials`), the route policy
(`policy`), per-principal rate limits (`ratelimit`), all applied by one ASGI middleware (`middleware`)
before a request's body is read."""
