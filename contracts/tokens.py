"""Access tokens (users.md §3): HS256 JWTs issued by the users worker, verified by edge and relay.

Pinned algorithm, required `iss`, `aud`, `sub`, `role`, `sid`, `jti`, `iat`, `exp`; `mcp: true`
while the user must change their password. Verification is local and cached per token string
until its `exp`, so an authenticated request costs a dict lookup after the first.
"""

from __future__ import annotations

import time
from uuid import UUID

import jwt
import msgspec

from contracts.errors import Unauthenticated
from contracts.ids import uuid7
from contracts.settings import Settings

ALGORITHM = "HS256"
_REQUIRED = ["iss", "aud", "sub", "role", "sid", "jti", "iat", "exp"]


class Claims(msgspec.Struct, frozen=True):
    sub: str
    role: str
    sid: str
    jti: str
    iat: int
    exp: int
    mcp: bool = False

    @property
    def user_id(self) -> UUID:
        return UUID(self.sub)


def issue_access_token(settings: Settings, *, user_id: UUID, role: str, session_id: str,
                       must_change_password: bool, now: float | None = None) -> tuple[str, int]:
    issued = int(now if now is not None else time.time())
    expires = issued + int(settings.access_token_ttl)
    claims: dict[str, object] = {
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "sub": str(user_id),
        "role": role,
        "sid": session_id,
        "jti": str(uuid7()),
        "iat": issued,
        "exp": expires,
    }
    if must_change_password:
        claims["mcp"] = True
    return jwt.encode(claims, settings.jwt_secret, algorithm=ALGORITHM), expires


class TokenVerifier:
    """Strict JWT verification with a bounded cache of already-verified tokens."""

    def __init__(self, settings: Settings, cache_size: int = 20_000) -> None:
        self._secret = settings.jwt_secret
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._cache: dict[str, Claims] = {}
        self._cache_size = cache_size

    def verify(self, token: str, now: float | None = None) -> Claims:
        now = time.time() if now is None else now
        claims = self._cache.get(token)
        if claims is not None:
            if claims.exp > now:
                return claims
            del self._cache[token]
            raise Unauthenticated("access token expired", code="token_expired")
        try:
            decoded = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": _REQUIRED, "verify_signature": True},
                leeway=0,
            )
            claims = msgspec.convert(decoded, Claims, strict=False)
            UUID(claims.sub)
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("access token expired", code="token_expired") from exc
        except (jwt.PyJWTError, msgspec.ValidationError, ValueError) as exc:
            raise Unauthenticated("invalid access token") from exc
        if len(self._cache) >= self._cache_size:
            self._cache.clear()
        self._cache[token] = claims
        return claims
