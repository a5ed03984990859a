"""Manual endpoints' API keys at rest: Fernet-encrypted under a key derived from ``server.secret_key``.

The key goes to evalscope only through the ``PEP_TARGET_API_KEY`` environment variable of its process;
it is never logged, returned by the API, or written in clear to the database or a command line.
"""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

ENV_VAR = "PEP_TARGET_API_KEY"


class SecretUnavailable(RuntimeError):
    """A stored key can no longer be decrypted (server.secret_key changed)."""


def _fernet(secret_key: str) -> Fernet:
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"pep-stress-api-key",
                   info=b"manual endpoint api key").derive(secret_key.encode())
    return Fernet(base64.urlsafe_b64encode(derived))


def encrypt(secret_key: str, value: str) -> str:
    return _fernet(secret_key).encrypt(value.encode()).decode()


def decrypt(secret_key: str, token: str) -> str:
    try:
        return _fernet(secret_key).decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnavailable("the stored API key cannot be decrypted (was server.secret_key changed?)") from None
