"""The OpenAPI 3.1 document of the example apps: the mock's ``POST /v1/chat/completions`` and
every answer the guard in front of it may give instead.

Both example apps serve it at ``GET /openapi.json`` (behind the guard, like every route but
``/healthz``). Copy the ``Problem`` schema and the guard's responses into your own API's document:
a client generated from it then knows the guard's refusals (RFC 9457 ``application/problem+json``
with a stable ``code``) as well as the app's own errors. The tests run schemathesis against both
apps with it (``tests/examples/test_schemathesis.py``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PROBLEM_CODES", "openapi_schema"]

PROBLEM_CODES = (
    "auth_unavailable",
    "guard_error",
    "incomplete_body",
    "insufficient_scope",
    "invalid_content_length",
    "invalid_request",
    "invalid_token",
    "limiter_unavailable",
    "missing_token",
    "rate_limited",
    "request_over_quota",
    "request_too_large",
    "suspicious_usage",
    "too_many_outputs",
)
"""The stable ``code`` of every problem the guard answers in front of this app."""

_PROBLEM: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "code": {"enum": list(PROBLEM_CODES)},
        "violated-policies": {"type": "array", "items": {"type": "string"}},
    },
}

_MESSAGE: dict[str, Any] = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant"]},
        "content": {"type": "string"},
    },
}

_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "properties": {
        "model": {"type": "string"},
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "max_tokens": {"type": "integer", "minimum": 1},
        "max_completion_tokens": {"type": "integer", "minimum": 1},
        "n": {"type": "integer", "minimum": 1, "maximum": 128},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "logprobs": {"type": "boolean"},
        "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
        "logit_bias": {
            "type": "object",
            "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100},
        },
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    },
}

_USAGE: dict[str, Any] = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        name: {"type": "integer", "minimum": 0}
        for name in ("prompt_tokens", "completion_tokens", "total_tokens")
    },
}

_COMPLETION: dict[str, Any] = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["index", "message", "finish_reason"],
                "properties": {
                    "index": {"type": "integer", "minimum": 0},
                    "message": {
                        "type": "object",
                        "required": ["role", "content"],
                        "properties": {
                            "role": {"const": "assistant"},
                            "content": {"type": ["string", "null"]},
                        },
                    },
                    "logprobs": {"type": ["object", "null"]},
                    "finish_reason": {"enum": ["stop", "length", "content_filter"]},
                },
            },
        },
        "usage": _USAGE,
    },
}

_OPENAI_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"}},
        }
    },
}


_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}, "id": {"type": "string"}},
}


def _refusal(description: str, *headers: str, error_format: str = "problem") -> dict[str, Any]:
    content = (
        {"application/json": {"schema": _OPENAI_ERROR}}
        if error_format == "openai"
        else {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    )
    out: dict[str, Any] = {"description": description, "content": content}
    out["headers"] = {name: {"$ref": f"#/components/headers/{name}"} for name in (*headers, "X-Request-Id")}
    return out


def openapi_schema(error_format: str = "problem") -> dict[str, Any]:
    """The example apps' OpenAPI document (a new dict each call), the guard's refusals in its
    ``error_format`` (``Guard.error_format``)."""

    def _problem(description: str, *headers: str) -> dict[str, Any]:
        return _refusal(description, *headers, error_format=error_format)

    bad_request = _problem("A malformed request (the guard) or an invalid chat request (the app).")
    bad_request["content"]["application/json"] = {"schema": _OPENAI_ERROR}
    return {
        "openapi": "3.1.0",
        "info": {"title": "distillguard example: a guarded chat-completions mock", "version": "1.0.0"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {"Problem": _PROBLEM, "ChatRequest": _REQUEST, "ChatCompletion": _COMPLETION},
            "headers": {
                "Retry-After": {
                    "description": "Seconds to wait.",
                    "schema": {"type": "integer", "minimum": 0},
                },
                "WWW-Authenticate": {
                    "description": "The Bearer challenge (RFC 6750).",
                    "schema": {"type": "string"},
                },
                "X-Request-Id": {
                    "description": "The request's trace id, when its trace is sampled: quote it to find "
                    "the guard's span (OpenAI's SDKs report it as the error's request_id).",
                    "schema": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
                },
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "security": [],
                    "responses": {
                        "200": {
                            "description": "Alive (exempt from the guard).",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
            "/v1/chat/completions": {
                "post": {
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ChatRequest"}}
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "A completion, or with ``stream: true`` its server-sent events.",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ChatCompletion"}
                                },
                                # each event (OpenAPI 3.1 reads ``schema`` as one event's):
                                # ``data`` is a chat.completion.chunk, then ``[DONE]``
                                "text/event-stream": {"schema": _EVENT},
                            },
                        },
                        "400": bad_request,
                        "401": _problem("No token, or a token that is not valid.", "WWW-Authenticate"),
                        "403": _problem("The token lacks a required scope, or the client is blocked."),
                        "413": _problem("The body is over the guard's cap."),
                        "429": _problem(
                            "A rate limit (with Retry-After), a request over a window's whole quota, or a "
                            "detector's block.",
                            "Retry-After",
                        ),
                        "503": _problem("The limit storage or the key set cannot be reached.", "Retry-After"),
                    },
                }
            },
        },
    }
