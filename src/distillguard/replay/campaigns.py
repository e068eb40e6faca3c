"""Grouping flagged clients into campaigns, offline.

Real extraction campaigns spread over many accounts that each stay under their limits; what
gives them away is what the accounts share. Two *flagged* clients are linked when they share

* a **template family**: the same first-four-words or last-four-words skeleton (digits masked)
  in at least 30% of each client's prompts (campaigns blend in other traffic);
* a **timing cadence** *and* a **request shape**: regular inter-arrival times (coefficient of
  variation <= 0.3) whose means are within 25% of each other, and the same dominant request
  shape (route, body keys, model, output parameters, user agent) in at least half of the requests;
* a **network or tenant** *and* a request shape: the same logged tenant or the same /24 (IPv4)
  or /48 (IPv6) address prefix, and the same dominant request shape.

A campaign is a connected group of at least two linked flagged clients. Clients that were never
flagged but share the campaign's template family are listed as ``linked_unflagged``: the
members an operator would act on next. Only hashes of the shared features are reported, never
prompt text.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from .track import ClientTrack

__all__ = ["find_campaigns"]

_LINKED_LISTED = 50


class _Union:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _network(ip: str | None) -> str | None:
    if not ip:
        return None
    if ":" in ip:
        return ":".join(ip.split(":")[:3])
    parts = ip.split(".")
    return ".".join(parts[:3]) if len(parts) == 4 else None


def _link_groups(union: _Union, groups: Iterable[Sequence[int]]) -> None:
    for members in groups:
        for other in members[1:]:
            union.union(members[0], other)


def find_campaigns(tracks: Sequence[ClientTrack], everyone: Iterable[ClientTrack]) -> list[dict[str, Any]]:
    """Campaigns among the flagged ``tracks``; ``everyone`` (all clients) supplies the
    unflagged clients linked by template family. Largest campaigns first."""
    n = len(tracks)
    union = _Union(n)
    families = [t.template_family() for t in tracks]
    shapes = [t.dominant_shape() for t in tracks]
    by_family: dict[str, list[int]] = defaultdict(list)
    by_net: dict[tuple[str, str], list[int]] = defaultdict(list)
    cadenced: list[tuple[float, str, int]] = []
    for i, track in enumerate(tracks):
        family = families[i]
        if family is not None:
            by_family[family].append(i)
        shape = shapes[i]
        if shape is None:
            continue
        for key in (_network(track.ip), f"tenant:{track.tenant}" if track.tenant else None):
            if key is not None:
                by_net[(key, shape)].append(i)
        cadence = track.cadence()
        if cadence is not None:
            cadenced.append((cadence, shape, i))
    _link_groups(union, by_family.values())
    _link_groups(union, by_net.values())
    cadenced.sort()
    for j in range(1, len(cadenced)):  # sorted by cadence: link neighbours within 25%
        for k in range(j - 1, -1, -1):
            if cadenced[j][0] > 1.25 * cadenced[k][0]:
                break
            if cadenced[j][1] == cadenced[k][1]:
                union.union(cadenced[j][2], cadenced[k][2])

    components: dict[int, list[int]] = defaultdict(list)
    for i in range(n):
        components[union.find(i)].append(i)
    groups = [members for members in components.values() if len(members) >= 2]

    family_of_unflagged: dict[str, list[str]] = defaultdict(list)
    wanted = {f for f in families if f is not None}
    if wanted:
        for track in everyone:
            if track.first_flag_request is None:
                family = track.template_family()
                if family is not None and family in wanted:
                    family_of_unflagged[family].append(track.client)

    out: list[dict[str, Any]] = []
    for members in groups:
        member_tracks = [tracks[i] for i in members]
        fams = sorted({f for f in (families[i] for i in members) if f is not None})
        cadences = [c for c in (t.cadence() for t in member_tracks) if c is not None]
        linked = sorted({c for f in fams for c in family_of_unflagged.get(f, ())})
        first = min(t.first_flag_ts for t in member_tracks if t.first_flag_ts is not None)
        out.append(
            {
                "clients": sorted(t.client for t in member_tracks),
                "size": len(members),
                "requests": sum(t.requests for t in member_tracks),
                "first_flag_ts": first,
                "max_risk": max(t.max_risk for t in member_tracks),
                "template_families": fams,
                "cadence_seconds": round(math.fsum(cadences) / len(cadences), 3) if cadences else None,
                "linked_unflagged": linked[:_LINKED_LISTED],
                "linked_unflagged_count": len(linked),
            }
        )
    out.sort(key=lambda c: (-c["size"], c["first_flag_ts"]))
    for number, campaign in enumerate(out, start=1):
        campaign["id"] = f"campaign-{number}"
    return out
