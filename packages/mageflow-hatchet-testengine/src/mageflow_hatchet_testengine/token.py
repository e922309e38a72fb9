"""The API token handed to Hatchet clients: an unsigned JWT carrying the engine's addresses.

The SDK never verifies the signature; it only base64-decodes the payload and reads the
``sub`` (tenant id), ``server_url`` (REST) and ``grpc_broadcast_address`` claims.
"""

from __future__ import annotations

import base64
import json


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_token(*, tenant_id: str, server_url: str, grpc_address: str) -> str:
    """Build an unsigned JWT-shaped token (``ey…``, three dot-separated parts)."""
    header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64url(
        json.dumps(
            {
                "sub": tenant_id,
                "server_url": server_url,
                "grpc_broadcast_address": grpc_address,
                "iss": "mageflow-hatchet-test-engine",
            }
        ).encode()
    )
    return f"{header}.{payload}.unsigned"
