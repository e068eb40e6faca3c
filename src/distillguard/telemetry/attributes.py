"""Building the guard span's attributes: caps, hashed client ids, and what each decision says.

Pure functions of the request and the decision (no I/O, no raw request contents): the prompt
appears only as its fingerprint, the client id hashed by default, strings cut to
``max_attribute_length`` and lists to 32 items.
"""

from __future__ import annotations

from typing import Any

from .._text import is_text
from ..decision import Action, Decision
from ..detectors import DetectorResult
from ..request import GuardRequest
from . import names as n
from .config import TelemetryConfig, hash_identifier

__all__ = ["OPERATIONS", "AttributeBuilder"]

OPERATIONS = {"chat": "chat", "completion": "text_completion", "embedding": "embeddings"}
"""``gen_ai.operation.name`` by query kind (the GenAI requests)."""
_MAX_LIST = 32
_MAX_IDS = 100_000


class AttributeBuilder:
    """Turns requests and decisions into span attributes under ``config``'s rules."""

    __slots__ = ("_ids", "_limit", "config")

    def __init__(self, config: TelemetryConfig) -> None:
        self.config = config
        self._limit = config.max_attribute_length
        self._ids: dict[str, str] = {}

    def cap(self, value: str) -> str:
        """``value`` cut to ``max_attribute_length``, and valid UTF-8: a lone surrogate (valid
        JSON in a token's claim) becomes ``?``, since an exporter that meets one drops the
        whole batch it is in."""
        limit = self._limit
        if len(value) > limit:
            value = value[:limit]
        if not is_text(value):
            value = value.encode("utf-8", "replace").decode("utf-8")
        return value

    def strings(self, values: tuple[str, ...]) -> list[str]:
        """At most 32 of ``values``, each capped."""
        return [self.cap(v) for v in values[:_MAX_LIST]]

    def client(self, client_id: str) -> str:
        """The value recorded for ``client_id`` (hashed when configured; hashes are cached)."""
        if not self.config.hash_identifiers:
            return self.cap(client_id)
        hashed = self._ids.get(client_id)
        if hashed is None:
            hashed = hash_identifier(client_id, self.config.hash_key)
            if len(self._ids) >= _MAX_IDS:
                self._ids.clear()
            self._ids[client_id] = hashed
        return hashed

    def request(self, request: GuardRequest) -> dict[str, Any]:
        """The attributes known when the request arrives (HTTP semantic conventions)."""
        config = self.config
        attributes: dict[str, Any] = {n.HTTP_METHOD: request.method}
        if config.record_path:
            attributes[n.URL_PATH] = self.cap(request.path)
        if config.record_client_address and request.client_address:
            attributes[n.CLIENT_ADDRESS] = self.cap(request.client_address)
        if config.record_user_agent and request.user_agent:
            attributes[n.USER_AGENT] = self.cap(request.user_agent)
        return attributes

    def decision(self, decision: Decision, attrs: dict[str, Any]) -> None:
        """Add what ``decision`` says to ``attrs`` (most important first; no detector scores)."""
        attrs[n.ATTR_DECISION] = decision.action.value
        identity = decision.identity
        if identity is not None:
            attrs[n.ATTR_CLIENT_ID] = client = self.client(identity.client_id)
            # the semantic conventions' end-user id: a pseudonym when hashed
            attrs[n.ENDUSER_PSEUDO_ID if self.config.hash_identifiers else n.ENDUSER_ID] = client
            attrs[n.ATTR_CLIENT_TIER] = self.cap(identity.tier)
            if identity.tenant:
                attrs[n.ATTR_CLIENT_TENANT] = self.cap(identity.tenant)
        if decision.shadow:
            attrs[n.ATTR_SHADOW] = True
        if decision.auth_failure is not None:
            attrs[n.ATTR_AUTH_FAILURE] = self.cap(decision.auth_failure)
        query = decision.query
        if query is not None:
            operation = OPERATIONS.get(query.kind)
            if operation is not None:
                attrs[n.GEN_AI_OPERATION] = operation  # says the kind too
            else:
                attrs[n.ATTR_QUERY_KIND] = query.kind
            if query.model is not None:
                attrs[n.GEN_AI_MODEL] = self.cap(query.model)
            if query.max_tokens is not None:
                attrs[n.GEN_AI_MAX_TOKENS] = query.max_tokens
            if query.text:
                attrs[n.ATTR_QUERY_FINGERPRINT] = query.fingerprint
                if decision.action is not Action.ALLOW:  # for a closer look only
                    attrs[n.ATTR_QUERY_LENGTH] = len(query.text)
        if decision.limits:
            tightest = min(decision.limits, key=lambda o: o.remaining)
            attrs[n.ATTR_LIMIT_REMAINING] = tightest.remaining
            if tightest.remaining <= 0 or not tightest.allowed:  # the window that binds
                attrs[n.ATTR_LIMIT_POLICY] = self.cap(tightest.check.policy)
        if decision.score > 0.0:  # detectors ran and found something
            attrs[n.ATTR_SCORE] = decision.score
        if decision.reasons:
            attrs[n.ATTR_REASONS] = self.strings(decision.reasons)
        if decision.errors:
            attrs[n.ATTR_ERRORS] = self.strings(decision.errors)

    @staticmethod
    def detectors(decision: Decision, attrs: dict[str, Any]) -> None:
        """Add each detector's score above 0 (a zero score says nothing) to ``attrs``, highest
        first: when the span's attribute budget cuts the list, the detectors that drove the
        decision stay on it."""
        positive = [r for r in decision.results if r.score > 0.0]
        if len(positive) > 1:
            positive.sort(key=_by_score, reverse=True)
        for result in positive:
            attrs[n.ATTR_DETECTOR_SCORE.format(result.detector)] = result.score


def _by_score(result: DetectorResult) -> float:
    return result.score
