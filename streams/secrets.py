"""Encryption of destination secrets before they reach Kafka (Fernet: AES-128-CBC + HMAC-SHA256).

The key comes from ``ABSYNC_SECRET_KEY`` (a url-safe base64 32-byte Fernet key; several keys may be
given, comma-separated, newest first, for rotation). Decrypted values live only in memory.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr

from streams.settings import Settings


class SecretDecryptionError(Exception):
    """A secret cannot be decrypted with the configured key(s) (wrong key or corrupt token)."""


class SecretBox:
    def __init__(self, key: SecretStr | str) -> None:
        raw = key.get_secret_value() if isinstance(key, SecretStr) else key
        keys = [k.strip() for k in raw.split(",") if k.strip()]
        try:
            self._fernet = MultiFernet([Fernet(k.encode()) for k in keys])
        except (ValueError, TypeError) as exc:
            raise ValueError("ABSYNC_SECRET_KEY must be a url-safe base64 32-byte Fernet key") from exc

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        return cls(settings.secret_key)

    def encrypt(self, value: str) -> bytes:
        return self._fernet.encrypt(value.encode())

    def decrypt(self, token: bytes) -> SecretStr:
        try:
            return SecretStr(self._fernet.decrypt(token).decode())
        except InvalidToken as exc:
            raise SecretDecryptionError(
                "cannot decrypt a destination secret (wrong ABSYNC_SECRET_KEY?)"
            ) from exc

    def decrypt_all(self, secrets: dict[str, bytes]) -> dict[str, SecretStr]:
        return {name: self.decrypt(token) for name, token in secrets.items()}
