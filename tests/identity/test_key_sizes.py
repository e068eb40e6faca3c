"""Keys PyJWT would refuse are refused when the config is built, never per token.

PyJWT refuses, on every verification, HMAC secrets shorter than the hash's output and RSA keys
under 2048 bits (``enforce_minimum_key_length=True``), and EC keys on another curve than the
algorithm's. A config holding such a key would start and then answer every token with 401, so
``JWTConfig`` refuses it with a ConfigurationError instead.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.warnings import InsecureKeyLengthWarning

from distillguard import ConfigurationError, JWTConfig
from distillguard.identity import JWTVerifier
from distillguard.identity.keys import algorithm_family, unusable_key_reason
from tests.helpers import AUDIENCE, ISSUER, KeyPair, Keys, b64url, jwt_config, make_token

SHORT_SECRETS = [("HS256", 31), ("HS384", 32), ("HS384", 47), ("HS512", 48), ("HS512", 63)]


def sign(key: Any, alg: str) -> str:
    """A valid token signed with ``key``, however short (PyJWT only warns when signing)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        return make_token(key=key, alg=alg)


def secret(size: int) -> bytes:
    """A printable secret of ``size`` bytes."""
    return (b"abcdefghijklmnopqrstuvwxyz" * 3)[:size]


# -- HMAC ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("alg", "size"), SHORT_SECRETS)
@pytest.mark.parametrize("form", ["bytes", "str", "jwk"])
def test_a_short_hmac_secret_is_refused_at_construction(alg: str, size: int, form: str) -> None:
    """Shorter than the hash's output: ConfigurationError naming the algorithm and the size it
    needs, never the secret."""
    raw = secret(size)
    key: Any = {"bytes": raw, "str": raw.decode(), "jwk": {"kty": "oct", "k": b64url(raw)}}[form]
    needed = {"HS256": 32, "HS384": 48, "HS512": 64}[alg]
    with pytest.raises(ConfigurationError) as info:
        jwt_config(algorithms=[alg], key=key)
    message = str(info.value)
    assert alg in message and f"{needed} bytes" in message
    assert raw.decode() not in message and b64url(raw) not in message


@pytest.mark.parametrize(("alg", "size"), [("HS256", 32), ("HS384", 48), ("HS512", 64)])
def test_an_hmac_secret_of_exactly_the_minimum_works(alg: str, size: int) -> None:
    """At the boundary the config is accepted and PyJWT verifies its tokens."""
    raw = secret(size)
    verifier = JWTVerifier(jwt_config(algorithms=[alg], key=raw))
    assert verifier.verify(sign(raw, alg)).client_id == "client-1"


def test_every_allowed_hmac_algorithm_is_checked() -> None:
    """A secret long enough for HS256 but not for HS512, with both allowed: refused for HS512
    (a secret serves every allowed HS algorithm, and PyJWT would refuse every HS512 token)."""
    with pytest.raises(ConfigurationError, match="HS512 needs an HMAC secret of at least 64 bytes"):
        jwt_config(algorithms=["HS256", "HS512"], key=secret(48))
    with pytest.raises(ConfigurationError, match="HS384"):
        jwt_config(algorithms=["HS384"], key={"k1": secret(48), "k2": secret(40)})
    jwt_config(algorithms=["HS256", "HS512"], key=secret(64))


def test_the_check_runs_in_jwtconfig_itself() -> None:
    """The config object refuses the key: a deployment fails at startup, before any verifier."""
    with pytest.raises(ConfigurationError, match="HS512"):
        JWTConfig(algorithms=["HS512"], key=secret(32), issuer=ISSUER, audience=AUDIENCE)


# -- RSA -------------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "PS512"])
@pytest.mark.parametrize("form", ["object", "private", "pem", "jwk"])
def test_an_rsa_1024_key_is_refused_at_construction(rsa_1024: KeyPair, alg: str, form: str) -> None:
    """RSA under 2048 bits, in any form: ConfigurationError naming the algorithm and 2048 bits."""
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(rsa_1024.public, as_dict=True)
    forms = {"object": rsa_1024.public, "private": rsa_1024.private, "pem": rsa_1024.public_pem, "jwk": jwk}
    with pytest.raises(ConfigurationError) as info:
        jwt_config(algorithms=[alg], key=forms[form])
    message = str(info.value)
    assert alg in message and "2048 bits" in message
    assert jwk["n"] not in message and "BEGIN" not in message


def test_an_rsa_key_of_2048_bits_works(keys: Keys) -> None:
    """At the boundary (2048 bits) the config is accepted and tokens verify."""
    assert keys.rsa.public.key_size == 2048
    verifier = JWTVerifier(jwt_config(algorithms=["RS256"], key=keys.rsa.public_pem))
    assert verifier.verify(make_token(key=keys.rsa)).client_id == "client-1"


def test_one_short_key_among_several_is_refused(keys: Keys, rsa_1024: KeyPair) -> None:
    """Every configured key is checked, not only the first."""
    with pytest.raises(ConfigurationError, match="2048 bits"):
        jwt_config(algorithms=["RS256"], key={"good": keys.rsa.public, "weak": rsa_1024.public})


# -- EC and OKP ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithms", "curve"), [(["ES256"], ec.SECP384R1()), (["ES384", "ES512"], ec.SECP256R1())]
)
def test_an_ec_key_on_a_curve_no_allowed_algorithm_uses_is_refused(algorithms: list[str], curve: Any) -> None:
    """An EC key object or JWK on another curve than every allowed ES algorithm's: refused, the
    message naming the curves the algorithms need."""
    public = ec.generate_private_key(curve).public_key()
    for key in (public, jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)):
        with pytest.raises(ConfigurationError, match=f"{algorithms[0]} needs secp"):
            jwt_config(algorithms=algorithms, key=key)


def test_ec_keys_for_several_curves_each_serve_their_own_algorithm() -> None:
    """With ES256 and ES384 allowed, a P-256 key and a P-384 key (by kid) are both accepted and
    each verifies the tokens of its algorithm."""
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1())
    config = jwt_config(algorithms=["ES256", "ES384"], key={"a": p256.public_key(), "b": p384.public_key()})
    verifier = JWTVerifier(config)
    assert verifier.verify(make_token(key=p256, alg="ES256", headers={"kid": "a"}, sub="a")).client_id == "a"
    assert verifier.verify(make_token(key=p384, alg="ES384", headers={"kid": "b"}, sub="b")).client_id == "b"


def test_okp_keys_have_no_size_check(keys: Keys) -> None:
    """Ed25519 and Ed448 keys are accepted for EdDSA (PyJWT enforces no size for them)."""
    assert JWTVerifier(jwt_config(algorithms=["EdDSA"], key=keys.ed25519.public_pem)).verify(
        make_token(key=keys.ed25519)
    )
    ed448_key = ed448.Ed448PrivateKey.generate()
    verifier = JWTVerifier(jwt_config(algorithms=["EdDSA"], key=ed448_key.public_key()))
    assert verifier.verify(make_token(key=ed448_key, alg="EdDSA")).client_id == "client-1"


# -- the same refusals as PyJWT --------------------------------------------------------------


def _keys_by_family() -> dict[str, list[tuple[str, Any]]]:
    """Keys around every boundary PyJWT checks, by family."""
    curves = [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1(), ec.SECP256K1()]
    return {
        "oct": [(f"hmac-{n}", secret(n)) for n in (1, 31, 32, 47, 48, 63, 64, 65)],
        "RSA": [
            (f"rsa-{bits}", rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key())
            for bits in (1024, 2047, 2048)
        ],
        "EC": [(c.name, ec.generate_private_key(c).public_key()) for c in curves],
        "OKP": [
            ("ed25519", ed25519.Ed25519PrivateKey.generate().public_key()),
            ("ed448", ed448.Ed448PrivateKey.generate().public_key()),
        ],
    }


def _pyjwt_refuses(alg: str, key: Any) -> bool:
    """Whether PyJWT, verifying an ``alg`` token with ``key``, refuses the key itself."""
    algorithm = jwt.get_algorithm_by_name(alg)
    try:
        prepared = algorithm.prepare_key(key)
    except jwt.InvalidKeyError:
        return True
    return algorithm.check_key_length(prepared) is not None


def test_the_construction_check_matches_pyjwt_for_every_algorithm_and_key() -> None:
    """For every algorithm PyJWT implements (and distillguard allows) and keys of every family
    around the boundaries, the construction check refuses exactly the keys PyJWT refuses when
    verifying: short HMAC secrets, RSA under 2048 bits, EC keys on another curve; no OKP key.
    A PyJWT upgrade that changes what it refuses fails here."""
    by_family = _keys_by_family()
    checked: set[str] = set()
    for alg in sorted(jwt.algorithms.get_default_algorithms()):
        try:
            family = algorithm_family(alg)
        except ConfigurationError:  # none, and ES521 (PyJWT's alias of ES512)
            continue
        for name, key in by_family[family]:
            refused = unusable_key_reason(key, [alg]) is not None
            assert refused == _pyjwt_refuses(alg, key), (alg, name)
        checked.add(alg)
    assert len(checked) == 14  # HS*, RS*, PS*, ES256, ES256K, ES384, ES512, EdDSA


# -- key formats that are not what they seem -------------------------------------------------


def _der(pair: KeyPair) -> bytes:
    from cryptography.hazmat.primitives import serialization

    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return pair.public.public_bytes(serialization.Encoding.DER, spki)


@pytest.mark.parametrize("family", ["rsa", "ec", "ed25519"])
def test_asymmetric_keys_in_other_encodings_verify_their_tokens(keys: Keys, family: str) -> None:
    """A PEM saved with a byte-order mark or CRLF line ends, a DER key, and a JWK given as
    JSON text are the same key as the PEM: the config builds and verifies its tokens."""
    pair: KeyPair = getattr(keys, family)
    jwk = json.loads(jwt.algorithms.get_default_algorithms()[pair.alg].to_jwk(pair.public))
    forms = {
        "bom": b"\xef\xbb\xbf" + pair.public_pem,
        "crlf": pair.public_pem.replace(b"\n", b"\r\n"),
        "der": _der(pair),
        "jwk-text": json.dumps(jwk),
    }
    for form, key in forms.items():
        verifier = JWTVerifier(jwt_config(algorithms=[pair.alg], key=key))
        assert verifier.verify(make_token(key=pair, alg=pair.alg)).client_id == "client-1", form


@pytest.mark.parametrize("family", ["rsa", "ec", "ed25519"])
def test_a_public_key_is_never_taken_as_an_hmac_secret(keys: Keys, family: str) -> None:
    """With only HMAC algorithms allowed, a public key in any encoding (PEM with a byte-order
    mark, DER, base64 DER without PEM armour, a JWK or a JWKS as JSON text) is refused when the
    config is built, so no token HMAC'd with the public key can ever verify; the message never
    quotes the key."""
    import base64

    pair: KeyPair = getattr(keys, family)
    der = _der(pair)
    jwk = json.loads(jwt.algorithms.get_default_algorithms()[pair.alg].to_jwk(pair.public))
    body = base64.b64encode(der)
    forms = {
        "bom": b"\xef\xbb\xbf" + pair.public_pem,
        "der": der,
        "base64-der": body,
        "base64-der-wrapped": b"\n".join(body[i : i + 64] for i in range(0, len(body), 64)),
        "jwk-text": json.dumps(jwk).encode(),
        "jwks-text": json.dumps({"keys": [jwk]}).encode(),
    }
    for form, key in forms.items():
        with pytest.raises(ConfigurationError) as info:
            jwt_config(algorithms=["HS256"], key=key)
        assert body.decode()[8:40] not in str(info.value), form


def test_a_secret_that_only_looks_like_a_key_is_still_a_secret() -> None:
    """Secrets that start like JSON, DER or base64 without being keys are HMAC secrets."""
    for raw in (b"{not json, a secret of 32 bytes or more}", b"0" + secret(40), b"MI" + secret(50)):
        verifier = JWTVerifier(jwt_config(algorithms=["HS256"], key=raw))
        assert verifier.verify(make_token(key=raw)).client_id == "client-1"


@pytest.mark.parametrize(
    "guessable",
    [
        b"09d25e094faa6ca2556c818166b7a9563b93f7099f6f0f4caa6cf63b88e8d3e7",  # FastAPI's tutorial
        b"a-string-secret-at-least-256-bits-long",  # jwt.io's debugger
        b"supersecretkeyyoushouldnotcommittogithub",  # slim-jwt-auth's README
        b"k" * 32,
        b"secret" * 6,
        b"0123456789abcdef" * 4,
        b"0" * 31 + b"1",
        b"abababababababababababababababcd",  # 4 distinct bytes
    ],
)
@pytest.mark.parametrize("form", ["bytes", "str", "jwk"])
def test_a_guessable_hmac_secret_is_refused_at_construction(guessable: bytes, form: str) -> None:
    """Long enough for PyJWT but guessable (published in documentation, a short pattern
    repeated, fewer than 8 distinct bytes): ConfigurationError, never quoting the secret
    (reliability.md J17)."""
    key: Any = {"bytes": guessable, "str": guessable.decode(), "jwk": {"kty": "oct", "k": b64url(guessable)}}[
        form
    ]
    with pytest.raises(ConfigurationError, match=r"secrets\.token_urlsafe") as info:
        jwt_config(algorithms=["HS256"], key=key)
    assert guessable.decode() not in str(info.value)


def test_random_secrets_are_never_taken_for_guessable_ones() -> None:
    """Secrets as people generate them (``token_urlsafe``, ``token_hex``, raw bytes, 32 to 64
    bytes) pass, 2,000 of each."""
    import secrets

    from distillguard.identity.keys import guessable_secret_reason

    for _ in range(2000):
        for raw in (
            secrets.token_urlsafe(32).encode(),
            secrets.token_hex(16).encode(),
            secrets.token_bytes(32),
            secrets.token_hex(32).encode(),
        ):
            assert guessable_secret_reason(raw) is None, raw
