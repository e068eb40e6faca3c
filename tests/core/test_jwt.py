"""JWT verification (``JWTVerifier``) and its configuration, with real keys and real tokens."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt as pyjwt
import pytest

from distillguard import AuthenticationError, ConfigurationError, JWTConfig
from distillguard.identity import JWTVerifier
from tests.helpers import (
    AUDIENCE,
    HS256_SECRET,
    ISSUER,
    Keys,
    b64url,
    default_claims,
    jwt_config,
    make_token,
    raw_token,
)

pytestmark = pytest.mark.timeout(30)


def verifier(**overrides: Any) -> JWTVerifier:
    """A verifier for the test issuer/audience; the cache is off unless asked for."""
    overrides.setdefault("cache_size", 0)
    return JWTVerifier(jwt_config(**overrides))


def reason(v: JWTVerifier, token: str) -> str:
    """The (internal) reason ``token`` is refused."""
    with pytest.raises(AuthenticationError) as info:
        v.verify(token)
    return info.value.reason


# -- accepted tokens -------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["rsa", "ec", "ed25519"])
def test_asymmetric_tokens_verify(keys: Keys, family: str) -> None:
    """RS256, ES256 and EdDSA tokens verify against the configured public key (PEM or object)."""
    pair = getattr(keys, family)
    for key in (pair.public_pem, pair.public, pair.private):
        v = verifier(algorithms=[pair.alg], key=key)
        assert v.verify(make_token(key=pair, sub="svc")).client_id == "svc"


def test_identity_fields() -> None:
    """Identity, tier, scopes and tenant come from the configured claims."""
    v = verifier(identity_claim="client_id", tier_claim="plan", tenant_claim="org")
    exp = int(time.time()) + 60
    identity = v.verify(make_token(client_id="c-9", plan="pro", org="acme", scope="read infer", exp=exp))
    assert identity.client_id == "c-9"
    assert identity.tier == "pro"
    assert identity.tenant == "acme"
    assert identity.scopes == frozenset({"read", "infer"})
    assert identity.expires_at == exp
    assert identity.claims["org"] == "acme"
    assert not identity.anonymous


def test_scp_list_and_default_tier() -> None:
    """``scp`` as a list gives the scopes; a missing tier claim gives the default tier."""
    identity = verifier(default_tier="free").verify(make_token(scp=["a", "b"]))
    assert identity.scopes == frozenset({"a", "b"})
    assert identity.tier == "free"


def test_numeric_sub_is_a_string_identity() -> None:
    """A numeric ``sub`` identifies the client as its decimal string."""
    assert (
        verifier(identity_claim="uid", required_claims=("exp",)).verify(make_token(uid=42)).client_id == "42"
    )


@pytest.mark.parametrize("sub", [True, 0.5, "", ["x"], {"a": 1}])
def test_unusable_identity_claim(sub: Any) -> None:
    """A ``sub`` that is not a non-empty string or integer is refused."""
    assert (
        reason(verifier(identity_claim="uid", required_claims=("exp",)), make_token(uid=sub))
        == "identity_claim"
    )


def test_audience_list_member_accepted_unless_strict() -> None:
    """An ``aud`` list containing ours is accepted, but not with ``strict_aud``."""
    token = make_token(aud=["other", AUDIENCE])
    assert verifier().verify(token).client_id == "client-1"
    assert reason(verifier(strict_aud=True), token) == "InvalidAudienceError"


def test_several_issuers_and_audiences() -> None:
    """Any configured issuer and audience is accepted."""
    v = verifier(issuer=[ISSUER, "https://idp2"], audience=["api", "api2"])
    assert v.verify(make_token(iss="https://idp2", aud="api2")).client_id == "client-1"


def test_leeway_bounds() -> None:
    """Expired by less than the leeway is accepted; by more, refused; ``iat`` beyond the
    leeway in the future is refused."""
    now = int(time.time())
    v = verifier(leeway=30)
    assert v.verify(make_token(iat=now - 100, exp=now - 29)).client_id == "client-1"
    assert reason(v, make_token(iat=now - 100, exp=now - 31)) == "expired"
    assert reason(v, make_token(iat=now + 120, exp=now + 300)) == "ImmatureSignatureError"
    assert reason(v, make_token(nbf=now + 120)) == "ImmatureSignatureError"


def test_trailing_padding_on_signature_accepted() -> None:
    """Correct base64url padding on the signature segment is accepted (PyJWT 2.15.1, #1209)."""
    token = make_token()
    while len(token.rsplit(".", 1)[1]) % 4 == 0:
        token = make_token(sub=token[-5:])
    sig = token.rsplit(".", 1)[1]
    padded = token + "=" * (-len(sig) % 4)
    assert padded != token
    assert verifier().verify(padded).client_id


# -- refused tokens --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        pytest.param({"exp": "soon"}, "DecodeError", id="exp-string"),
        pytest.param({"exp": []}, "DecodeError", id="exp-list"),
        pytest.param({"aud": {}}, "InvalidAudienceError", id="aud-object"),
        pytest.param({"iss": 1}, "InvalidIssuerError", id="iss-number"),
        pytest.param({"iat": "now"}, "InvalidIssuedAtError", id="iat-string"),
        pytest.param({"nbf": "later"}, "DecodeError", id="nbf-string"),
        pytest.param({"sub": 0}, "InvalidSubjectError", id="sub-number"),
        pytest.param({"jti": []}, "InvalidJTIError", id="jti-list"),
    ],
)
def test_wrong_type_claims_are_401_not_500(claims: dict[str, Any], expected: str) -> None:
    """Claims of the wrong type are refused as an authentication failure, never an error."""
    token = raw_token({"alg": "HS256", "typ": "JWT"}, default_claims(**claims), hmac_key=HS256_SECRET)
    got = reason(verifier(), token)
    assert got == expected or got.endswith("Error")


@pytest.mark.parametrize(
    "header",
    [
        pytest.param({"crit": ["mfa"]}, id="crit-unknown"),
        pytest.param({"crit": []}, id="crit-empty"),
        pytest.param({"crit": ["alg"]}, id="crit-alg"),
        pytest.param({"b64": False}, id="b64-false-without-crit"),
    ],
)
def test_crit_and_b64_headers_refused(header: dict[str, Any]) -> None:
    """``crit`` extensions and ``b64: false`` are not understood, so the token is refused."""
    token = raw_token({"alg": "HS256", "typ": "JWT", **header}, default_claims(), hmac_key=HS256_SECRET)
    reason(verifier(), token)


def test_typ_enforced_when_configured() -> None:
    """With ``typ="at+jwt"`` an ID-token-style ``typ: JWT`` (or none) is refused; the right
    typ passes, compared as a media type (case-insensitive, ``application/`` optional)."""
    v = verifier(typ="at+jwt")
    assert reason(v, make_token()) == "typ"
    assert reason(v, raw_token({"alg": "HS256"}, default_claims(), hmac_key=HS256_SECRET)) == "typ"
    for typ in ("at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT"):
        assert v.verify(make_token(headers={"typ": typ})).client_id == "client-1"
    assert reason(v, make_token(headers={"typ": "application/jwt"})) == "typ"


def test_deeply_nested_header_is_bounded() -> None:
    """A header of 100k ``[`` is refused quickly, without RecursionError."""
    token = b64url(b"[" * 100_000) + "." + b64url({"sub": "x"}) + ".c2ln"
    started = time.perf_counter()
    assert reason(verifier(max_token_bytes=1_000_000), token) in ("header_too_large", "malformed")
    assert time.perf_counter() - started < 0.5


def test_deeply_nested_payload_is_bounded() -> None:
    """A payload of 100k nested arrays is refused without RecursionError (signature first)."""
    token = b64url({"alg": "HS256", "typ": "JWT"}) + "." + b64url(b"[" * 100_000) + ".c2ln"
    reason(verifier(max_token_bytes=1_000_000), token)


@pytest.mark.parametrize("token", ["é.é.é", "eyJhbGciOiJIUzI1NiJ9.é.sig", "a.b.c.d", "\x00.\x00.\x00"])
def test_odd_characters_refused(token: str) -> None:
    """Non-ASCII and control characters in a token are a plain refusal."""
    reason(verifier(), token)


def test_token_over_max_bytes_refused_before_parsing() -> None:
    """A token longer than ``max_token_bytes`` is refused as ``too_large``."""
    assert reason(verifier(max_token_bytes=100), make_token()) == "too_large"


@pytest.mark.parametrize("kid", ["", "../../etc/passwd", "a b", "k" * 129, 7, [], {}])
def test_bad_kid_refused_fast(kid: Any) -> None:
    """A malformed ``kid`` is refused in well under 50 ms, before any key lookup."""
    token = raw_token({"alg": "HS256", "kid": kid}, default_claims(), hmac_key=HS256_SECRET)
    started = time.perf_counter()
    reason(verifier(), token)
    assert time.perf_counter() - started < 0.05


def test_kid_selects_key(keys: Keys) -> None:
    """With keys by ``kid``, a token naming a known kid verifies; an unknown kid or no kid is
    refused; a kid bound to another key family is refused."""
    v = verifier(algorithms=["RS256", "ES256"], key={"r1": keys.rsa.public_pem, "e1": keys.ec.public_pem})
    assert v.verify(make_token(key=keys.rsa, headers={"kid": "r1"})).client_id == "client-1"
    assert v.verify(make_token(key=keys.ec, headers={"kid": "e1"})).client_id == "client-1"
    assert reason(v, make_token(key=keys.rsa, headers={"kid": "r2"})) == "unknown_key"
    assert reason(v, make_token(key=keys.ec, headers={"kid": "r1"})) == "unknown_key"


def test_hs256_with_public_key_as_secret_refused(keys: Keys) -> None:
    """Algorithm confusion: an HS256 token HMAC'd with the RSA public PEM is refused even when
    HS256 is also allowed with its own secret."""
    v = verifier(algorithms=["RS256", "HS256"], key=[keys.rsa.public_pem, HS256_SECRET])
    forged = raw_token({"alg": "HS256", "typ": "JWT"}, default_claims(), hmac_key=keys.rsa.public_pem)
    assert reason(v, forged) == "InvalidSignatureError"
    assert v.verify(make_token()).client_id == "client-1"
    assert v.verify(make_token(key=keys.rsa)).client_id == "client-1"


def _key_forms(keys: Keys) -> dict[str, Any]:
    """The RSA public key in the forms a deployment configures it in, and an attacker HMACs
    with (CVE-2016-10555, CVE-2022-29217)."""
    import base64

    from cryptography.hazmat.primitives import serialization

    pem = keys.rsa.public_pem
    der = keys.rsa.public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(keys.rsa.public))
    return {
        "pem": pem,
        "pem-crlf": pem.replace(b"\n", b"\r\n"),
        "pem-spaces": b"  \n" + pem + b"\n\n  ",
        "pem-bom": b"\xef\xbb\xbf" + pem,
        "der": der,
        "base64-der": base64.b64encode(der),
        "jwk": json.dumps(jwk).encode(),
        "jwks": json.dumps({"keys": [jwk]}).encode(),
    }


@pytest.mark.parametrize("configured", ["pem", "pem-crlf", "pem-bom", "der", "jwk"])
def test_hs256_keyed_with_any_form_of_the_public_key_is_refused(keys: Keys, configured: str) -> None:
    """With RS256 and HS256 both allowed (HS256 with its own secret), and the RSA key
    configured in any of its forms, an HS256 token HMAC'd with any encoding of that public key
    is refused as a bad signature, never an error."""
    forms = _key_forms(keys)
    key: Any = forms[configured]
    if configured == "jwk":
        key = json.loads(key)
    v = verifier(algorithms=["RS256", "HS256"], key=[key, HS256_SECRET])
    assert v.verify(make_token(key=keys.rsa)).client_id == "client-1"
    for name, form in forms.items():
        forged = raw_token(
            {"alg": "HS256", "typ": "JWT"}, default_claims(sub=f"forged-{name}"), hmac_key=form
        )
        assert reason(v, forged) == "InvalidSignatureError", name


def test_cache_still_expires_tokens() -> None:
    """A cached token is refused once it expires (the cache never outlives ``exp``)."""
    now = [time.time()]
    v = JWTVerifier(jwt_config(), clock=lambda: now[0])
    token = make_token(exp=int(now[0]) + 10)
    assert v.verify(token).client_id == "client-1"
    assert v.verify(token).client_id == "client-1"  # from the cache
    now[0] += 11
    with pytest.raises(AuthenticationError):
        v.verify(token)


def test_cache_is_bounded() -> None:
    """The verified-token cache never holds more than ``cache_size`` tokens."""
    v = JWTVerifier(jwt_config(cache_size=3))
    for i in range(10):
        v.verify(make_token(sub=f"c{i}"))
    assert len(v._cache) <= 3


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"algorithms": []}, id="no-algorithms"),
        pytest.param({"algorithms": "HS256"}, id="algorithms-as-string"),
        pytest.param({"algorithms": ["none"]}, id="alg-none"),
        pytest.param({"algorithms": ["HS256", "none"]}, id="none-among-others"),
        pytest.param({"algorithms": ["XS999"]}, id="unknown-alg"),
        pytest.param({"key": b"short-secret"}, id="short-hmac-secret"),
        pytest.param({"key": "k" * 31}, id="31-byte-secret"),
        pytest.param({"issuer": ""}, id="no-issuer"),
        pytest.param({"audience": ""}, id="no-audience"),
        pytest.param({"leeway": -1}, id="negative-leeway"),
        pytest.param({"leeway": 301}, id="huge-leeway"),
        pytest.param({"key": None}, id="no-key"),
        pytest.param({"realm": 'a"b'}, id="quote-in-realm"),
        pytest.param({"max_token_bytes": 10}, id="tiny-max-token"),
        pytest.param({"audience": ["api", "api2"], "strict_aud": True}, id="strict-aud-with-a-list"),
        pytest.param({"required_scopes": "infer"}, id="required-scopes-as-a-string"),
        pytest.param({"required_claims": "exp"}, id="required-claims-as-a-string"),
        pytest.param({"route_scopes": {"/v1/": "embed"}}, id="route-scopes-as-a-string"),
    ],
)
def test_invalid_config_fails_fast(overrides: dict[str, Any]) -> None:
    """Invalid JWT settings raise ConfigurationError when the verifier is built."""
    with pytest.raises(ConfigurationError):
        JWTVerifier(jwt_config(**overrides))


def test_short_hmac_secret_as_jwk() -> None:
    """A short HMAC secret is refused at construction also when given as an ``oct`` JWK."""
    with pytest.raises(ConfigurationError, match="32 bytes"):
        JWTVerifier(jwt_config(key={"kty": "oct", "k": b64url(b"short-secret")}))
    long_jwk = {"kty": "oct", "k": b64url(HS256_SECRET)}
    assert JWTVerifier(jwt_config(key=long_jwk)).verify(make_token()).client_id == "client-1"


def test_embedded_key_headers_never_reach_the_resolver() -> None:
    """Tokens with ``jku``/``jwk``/``x5u``/``x5c`` headers or a malformed ``kid`` are refused
    before the key resolver is asked for anything."""
    asked: list[Any] = []

    class Recording:
        def key_for(self, kid: str | None, alg: str) -> Any:
            asked.append(kid)
            return HS256_SECRET

    v = JWTVerifier(
        JWTConfig(algorithms=["HS256"], key_resolver=Recording(), issuer=ISSUER, audience=AUDIENCE)
    )
    headers: list[dict[str, Any]] = [
        {"jku": "https://evil.example.test/jwks"},
        {"jwk": {"kty": "oct", "k": "c2VjcmV0"}},
        {"x5u": "https://evil.example.test/cert"},
        {"x5c": ["MIIB"]},
        {"kid": "../../etc/passwd"},
    ]
    for header in headers:
        token = raw_token({"alg": "HS256", **header}, default_claims(), hmac_key=HS256_SECRET)
        with pytest.raises(AuthenticationError):
            v.verify(token)
    assert asked == []
    assert v.verify(make_token(headers={"kid": "good-kid"})).client_id == "client-1"
    assert asked == ["good-kid"]


def test_pem_key_with_only_hmac_algorithms(keys: Keys) -> None:
    """A PEM public key with only HS algorithms allowed is a configuration error (it would be
    the algorithm-confusion secret)."""
    with pytest.raises(ConfigurationError):
        JWTVerifier(jwt_config(algorithms=["HS256"], key=keys.rsa.public_pem))


def test_key_family_must_match_an_algorithm(keys: Keys) -> None:
    """An EC key with only RSA algorithms allowed is a configuration error."""
    with pytest.raises(ConfigurationError):
        JWTVerifier(jwt_config(algorithms=["RS256"], key=keys.ec.public_pem))


def test_key_and_resolver_are_exclusive() -> None:
    """Exactly one of ``key`` and ``key_resolver`` must be given."""

    class Resolver:
        def key_for(self, kid: str | None, alg: str) -> Any:
            return HS256_SECRET

    with pytest.raises(ConfigurationError):
        JWTConfig(
            algorithms=["HS256"], key=HS256_SECRET, key_resolver=Resolver(), issuer=ISSUER, audience=AUDIENCE
        )
    v = JWTVerifier(
        JWTConfig(algorithms=["HS256"], key_resolver=Resolver(), issuer=ISSUER, audience=AUDIENCE)
    )
    assert v.verify(make_token()).client_id == "client-1"


def test_resolver_failure_is_a_refusal() -> None:
    """A key resolver that raises (a bug, an outage surfaced as an exception) refuses the token:
    authentication fails closed and never lets the request through unauthenticated."""

    class Broken:
        def key_for(self, kid: str | None, alg: str) -> Any:
            raise RuntimeError("resolver bug")

    v = JWTVerifier(JWTConfig(algorithms=["HS256"], key_resolver=Broken(), issuer=ISSUER, audience=AUDIENCE))
    with pytest.raises(AuthenticationError):
        v.verify(make_token())


def test_infinite_exp_is_a_refusal() -> None:
    """A correctly signed token whose ``exp`` is JSON ``Infinity`` is refused (PyJWT raises
    OverflowError converting it), never an unexpected error."""
    token = raw_token({"alg": "HS256", "typ": "JWT"}, default_claims(exp=float("inf")), hmac_key=HS256_SECRET)
    with pytest.raises(AuthenticationError):
        verifier().verify(token)
