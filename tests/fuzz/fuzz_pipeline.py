"""Fuzz target: the whole pipeline (token pre-parser, JWT checks, JSON extractor, limits,
detectors, policy) on arbitrary ``Authorization``, ``Content-Type`` and body bytes.

Run: ``python -m tests.fuzz.fuzz_pipeline -max_total_time=60``. Every input must give a
decision, never an exception, and a refusal must be one of the documented statuses with a
stable ``code``. Tokens come three ways: arbitrary text, a token whose header and claims are
fuzzed JSON signed with the real key (past the signature, into the claim checks), and a valid
token (into the body parsing and the detectors).
"""

from __future__ import annotations

import sys
import time

import atheris

with atheris.instrument_imports(include=["distillguard"]):
    from distillguard import Guard, JWTConfig, LimitConfig
    from distillguard._drivers import drive
    from distillguard.decision import Decision
    from distillguard.detectors.defaults import default_detectors
    from distillguard.request import GuardRequest

import jwt

from tests.helpers import raw_token

SECRET = b"fuzz-target-secret-0123456789abcdef"
STATUSES = {400, 401, 403, 413, 415, 422, 429, 503}
PATHS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/predict", "/other"]
TYPES = ["application/json", "application/json; charset=utf-16", "text/plain", "", "multipart/form-data"]

GUARD = Guard(
    jwt=JWTConfig(algorithms=["HS256"], key=SECRET, issuer="https://idp", audience="api"),
    limits=LimitConfig(default="1000000/minute"),
    detectors=default_detectors(),
)
PERFORM = GUARD.sync_performer()


def _token(fdp: atheris.FuzzedDataProvider) -> str | None:
    way = fdp.ConsumeIntInRange(0, 3)
    if way == 0:
        return None
    if way == 1:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300))
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": "fuzz",
        "iss": "https://idp",
        "aud": "api",
        "iat": now,
        "exp": now + 60,
    }
    if way == 2:  # fuzzed claims and header fields, signed with the real key
        for _ in range(fdp.ConsumeIntInRange(0, 4)):
            name = fdp.PickValueInList(["sub", "iss", "aud", "iat", "exp", "nbf", "tier", "scope", "x"])
            claims[name] = fdp.PickValueInList(
                [
                    None,
                    0,
                    -1,
                    2**63,
                    1.5,
                    "",
                    "fuzz",
                    [],
                    ["api"],
                    {},
                    True,
                    fdp.ConsumeUnicodeNoSurrogates(20),
                ]
            )
        header = {
            "alg": "HS256",
            fdp.PickValueInList(["kid", "jku", "x5u", "typ", "crit"]): fdp.ConsumeUnicodeNoSurrogates(10),
        }
        return "Bearer " + raw_token(header, claims, hmac_key=SECRET)  # PyJWT's encode checks claims
    return "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")


def TestOneInput(data: bytes) -> None:  # the name atheris calls
    fdp = atheris.FuzzedDataProvider(data)
    authorization = _token(fdp)
    content_type = fdp.PickValueInList(TYPES)
    path = fdp.PickValueInList(PATHS)
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    request = GuardRequest(
        method="POST",
        path=path,
        authorization=authorization,
        content_type=content_type,
        body=body,
        client_address="198.51.100.7",
        user_agent="fuzz",
        timestamp=GUARD.clock(),
    )
    decision = drive(GUARD.flow(request), PERFORM)  # an exception here is a finding
    assert isinstance(decision, Decision)
    if decision.problem is not None:
        assert decision.problem.status in STATUSES, decision.problem.status
        assert decision.problem.code
    assert not [e for e in decision.errors if e.startswith(("detector:", "guard:"))], decision.errors


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
