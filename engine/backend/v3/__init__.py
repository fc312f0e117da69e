"""The V3 JSON API: its OAuth2 (`auth`: tokens, their store, refresh, the device flow), its
client (`V3Client`) and `V3Backend`, which puts it behind the pipeline's `Backend` protocol."""

from engine.backend.v3.auth import (
    DEFAULT_AUTH_URL,
    DeviceCode,
    FileTokenStore,
    OAuthEndpoints,
    TokenSet,
    V3Auth,
    default_token_path,
    device_login,
)
from engine.backend.v3.backend import V3_CAPABILITIES, V3Backend
from engine.backend.v3.client import DEFAULT_BASE_URL, V3Client, classify

__all__ = [
    "DEFAULT_AUTH_URL",
    "DEFAULT_BASE_URL",
    "V3_CAPABILITIES",
    "DeviceCode",
    "FileTokenStore",
    "OAuthEndpoints",
    "TokenSet",
    "V3Auth",
    "V3Backend",
    "V3Client",
    "classify",
    "default_token_path",
    "device_login",
]
