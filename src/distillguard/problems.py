"""RFC 9457 ``application/problem+json`` error responses, each with a stable ``code`` member,
or the same refusals in the error shape of OpenAI's API (``Guard(error_format="openai")``):
``{"error": {"message", "type", "param", "code"}}`` as ``application/json``, which OpenAI's SDKs
read into the exception they raise (``e.code``, ``e.message``, ``e.type``).

Bodies never carry token contents, claim names or prompt text: one generic message per code.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["ERROR_FORMATS", "ErrorFormat", "Problem"]

_PROBLEM_TYPES = "https://iana.org/assignments/http-problem-types#"

ErrorFormat = Literal["problem", "openai"]
"""How refusals are written: RFC 9457 problem details, or OpenAI's error object."""
ERROR_FORMATS: tuple[ErrorFormat, ...] = ("problem", "openai")
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """A refusal, rendered as problem+json.

    Attributes:
        status: the HTTP status.
        code: the stable machine-readable code (e.g. ``"rate_limited"``).
        title: a short human-readable summary.
        detail: a human-readable explanation (generic; never request contents).
        type: the problem type URI.
        headers: extra response headers (``WWW-Authenticate``, ``Retry-After``...).
        extensions: extra members of the body.
    """

    status: int
    code: str
    title: str
    detail: str
    type: str = "about:blank"
    headers: tuple[tuple[str, str], ...] = ()
    extensions: Mapping[str, object] = field(default_factory=dict)

    def body(self) -> bytes:
        """The JSON body."""
        doc: dict[str, object] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        doc.update(self.extensions)
        return json.dumps(doc, separators=(",", ":")).encode()

    def openai_body(self) -> bytes:
        """The body in OpenAI's error shape: ``message`` the detail, ``type`` the kind of error
        by status, ``code`` the stable code; the extension members beside them."""
        error: dict[str, object] = {
            "message": self.detail,
            "type": _OPENAI_TYPES.get(
                self.status, "server_error" if self.status >= 500 else "invalid_request_error"
            ),
            "param": None,
            "code": self.code,
        }
        error.update(self.extensions)
        return json.dumps({"error": error}, separators=(",", ":")).encode()

    def render(
        self, extra_headers: Sequence[tuple[str, str]] = (), error_format: ErrorFormat = "problem"
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Return ``(status, headers, body)`` with ``Content-Type`` and ``Content-Length`` set,
        in ``error_format``."""
        openai = error_format == "openai"
        body = self.openai_body() if openai else self.body()
        headers = [
            ("content-type", "application/json" if openai else "application/problem+json"),
            ("content-length", str(len(body))),
            ("cache-control", "no-store"),
            *self.headers,
            *extra_headers,
        ]
        return self.status, headers, body

    # Factories for the error contract -------------------------------------------------------

    @classmethod
    def missing_token(cls, realm: str) -> Problem:
        """401 with a bare challenge: the request had no credentials (RFC 6750 section 3)."""
        return cls(
            status=401,
            code="missing_token",
            title="Unauthorized",
            detail="This API needs a bearer token.",
            headers=(("www-authenticate", f'Bearer realm="{realm}"'),),
        )

    @classmethod
    def invalid_request(cls, realm: str) -> Problem:
        """400 ``invalid_request``: the ``Authorization`` header is malformed (an empty bearer
        token, one with characters no token has, or several headers; RFC 6750 section 3.1)."""
        return cls(
            status=400,
            code="invalid_request",
            title="Bad Request",
            detail="The Authorization header is malformed.",
            headers=(("www-authenticate", f'Bearer realm="{realm}", error="invalid_request"'),),
        )

    @classmethod
    def invalid_token(cls, realm: str) -> Problem:
        """401 ``invalid_token``, the same whatever check failed."""
        return cls(
            status=401,
            code="invalid_token",
            title="Unauthorized",
            detail="The bearer token is not valid.",
            headers=(("www-authenticate", f'Bearer realm="{realm}", error="invalid_token"'),),
        )

    @classmethod
    def insufficient_scope(cls, realm: str, scopes: Sequence[str]) -> Problem:
        """403 ``insufficient_scope`` naming the scopes required."""
        scope = " ".join(scopes)
        return cls(
            status=403,
            code="insufficient_scope",
            title="Forbidden",
            detail="The bearer token lacks a scope this request needs.",
            headers=(
                ("www-authenticate", f'Bearer realm="{realm}", error="insufficient_scope", scope="{scope}"'),
            ),
            extensions={"required-scopes": list(scopes)},
        )

    @classmethod
    def rate_limited(cls, retry_after: int, policies: Sequence[str]) -> Problem:
        """429 quota exceeded, with ``Retry-After``."""
        return cls._quota_exceeded(
            "rate_limited",
            "A rate limit was reached; retry later.",
            ("retry-after", str(retry_after)),
            policies,
        )

    @classmethod
    def over_quota(cls, policies: Sequence[str]) -> Problem:
        """429 quota exceeded for a request that costs more than a window's whole quota (``n``
        outputs, or tokens, over the limit): no wait would admit it, so there is no
        ``Retry-After``, and ``x-should-retry: false`` keeps OpenAI's SDKs from retrying it."""
        return cls._quota_exceeded(
            "request_over_quota",
            "This request alone costs more than a rate limit allows; retrying will not help.",
            ("x-should-retry", "false"),
            policies,
        )

    @classmethod
    def _quota_exceeded(
        cls, code: str, detail: str, header: tuple[str, str], policies: Sequence[str]
    ) -> Problem:
        return cls(
            status=429,
            code=code,
            title="Too Many Requests",
            detail=detail,
            type=_PROBLEM_TYPES + "quota-exceeded",
            headers=(header,),
            extensions={"violated-policies": list(policies)},
        )

    @classmethod
    def suspicious_usage(cls, status: int, retry_after: int) -> Problem:
        """429 (or 403) for a detector block; ``Retry-After`` when the block is temporary. The
        IANA type ``abnormal-usage-detected`` is defined for 429 only: a 403 is ``about:blank``.
        The policy it violated is named generically (``usage-pattern``): which detector fired
        is never told to the client. ``x-should-retry: false`` tells OpenAI's SDKs not to retry
        it at once (they retry a 429 twice by default, whatever ``Retry-After`` says past a
        minute)."""
        headers: tuple[tuple[str, str], ...] = (("x-should-retry", "false"),)
        if status in (429, 503):
            headers = (("retry-after", str(retry_after)), *headers)
        return cls(
            status=status,
            code="suspicious_usage",
            title="Too Many Requests" if status == 429 else "Forbidden",
            detail="This client's usage pattern is not allowed.",
            type=_PROBLEM_TYPES + "abnormal-usage-detected" if status == 429 else "about:blank",
            headers=headers,
            extensions={"violated-policies": ["usage-pattern"]},
        )

    @classmethod
    def too_large(cls, limit: int) -> Problem:
        """413 for a body over the cap (the connection is closed: the body was not drained)."""
        return cls(
            status=413,
            code="request_too_large",
            title="Content Too Large",
            detail=f"The request body exceeds {limit} bytes.",
            headers=(("connection", "close"),),
            extensions={"max-bytes": limit},
        )

    @classmethod
    def bad_body(cls, code: str, detail: str) -> Problem:
        """400 for a request body the guard cannot take as sent: ``incomplete_body`` (the body
        ended before its ``Content-Length``), ``invalid_content_length``."""
        return cls(status=400, code=code, title="Bad Request", detail=detail)

    @classmethod
    def unavailable(cls, code: str, retry_after: int) -> Problem:
        """503 when a dependency is down and policy says to refuse (``limiter_unavailable``...)."""
        return cls(
            status=503,
            code=code,
            title="Service Unavailable",
            detail="A dependency of the API guard is unavailable; retry later.",
            type=_PROBLEM_TYPES + "temporary-reduced-capacity",
            headers=(("retry-after", str(retry_after)),),
        )

    @classmethod
    def upstream(cls, code: str) -> Problem:
        """502 ``upstream_unavailable`` (the gateway's model server could not be reached or
        answered with a broken response) or 504 ``upstream_timeout`` (it did not answer in
        time)."""
        timeout = code == "upstream_timeout"
        return cls(
            status=504 if timeout else 502,
            code=code,
            title="Gateway Timeout" if timeout else "Bad Gateway",
            detail=f"The model server {'did not answer in time' if timeout else 'is unavailable'}.",
        )

    @classmethod
    def guard_error(cls) -> Problem:
        """500 when the guard itself failed and policy says to fail closed."""
        return cls(
            status=500,
            code="guard_error",
            title="Internal Server Error",
            detail="The request could not be checked.",
        )
