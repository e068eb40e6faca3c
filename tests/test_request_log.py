"""Recording guarded requests as a replay log (``RequestLog``, an ``on_decision`` hook): every
line is read back by the replay's own reader with the body as sent, through both adapters; a
refusal carries its decision; sampling keeps whole client streams; a slow disk drops lines and
never holds a request; a forked worker writes its own file; and the log replays and calibrates."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from distillguard import Guard, LimitConfig
from distillguard.cli import main
from distillguard.errors import ConfigurationError
from distillguard.replay import LogStats, read_log
from distillguard.request_log import RequestLog
from tests.helpers import ISSUER, jwt_config, make_token
from tests.limiting.apps import Harness, chat_body

pytestmark = [pytest.mark.timeout(60)]


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def harness(kind: str, log: RequestLog, default: str = "1000/minute") -> Harness:
    return Harness(kind, Guard(jwt=jwt_config(), limits=LimitConfig(default=default), on_decision=log))


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_each_request_becomes_a_line_the_replay_reads(tmp_path: Path, kind: str) -> None:
    """Three chat requests (one pretty-printed over several lines, one with non-ASCII text), a
    non-JSON body and one refused by the limit: five lines, in order, owner-only; the replay's
    reader takes every one, with the bodies as sent. A request without a valid token has no
    client and is not recorded."""
    log = RequestLog(tmp_path / "requests.jsonl")
    h = harness(kind, log, default="4/minute")
    pretty = json.dumps({"model": "m1", "messages": [{"role": "user", "content": "a\nb"}]}, indent=2).encode()
    bodies = [chat_body("first"), pretty, chat_body("ünïcode ✓ \u2028 end"), b"not json", chat_body("fifth")]
    try:
        statuses = [h.call(b, headers={"user-agent": "probe/1.0"})[0] for b in bodies]
        assert h.call(chat_body(), token="not-a-token")[0] == 401
    finally:
        h.close()
    assert statuses == [200, 200, 200, 200, 429]
    log.flush()
    assert log.written == 5 and log.dropped == 0
    path = tmp_path / "requests.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    got = lines(path)
    assert [g["decision"] for g in got] == ["allow"] * 4 + ["rate_limited"]
    first = got[0]
    assert (
        first["client"] == "client-1"
        and first["tenant"] == ISSUER
        and first["path"] == "/v1/chat/completions"
    )
    assert first["method"] == "POST" and first["ip"] == "10.0.0.1"
    assert first["headers"] == {"user-agent": "probe/1.0", "content-type": "application/json"}
    assert abs(float(str(first["ts"])) - time.time()) < 30
    assert got[1]["body"] == json.loads(pretty) and got[2]["body"] == json.loads(bodies[2])
    assert got[3]["body"] == "not json"
    stats = LogStats()
    records = list(read_log(path.read_text("utf-8").splitlines(), stats))
    assert [json.loads(r.body) for r in records if r.body != b"not json"] == [
        json.loads(b) for b in bodies if b != b"not json"
    ]
    assert len(records) == 5 and stats.malformed.count == 0 and stats.unparsed_bodies.count == 1
    assert [r.decision for r in records] == ["allow"] * 4 + ["rate_limited"]
    odd = json.dumps({**first, "decision": "bogus"})
    assert [r.decision for r in read_log([odd], LogStats())] == [None]  # not a decision: ignored
    log.close()


def test_served_only_leaves_refusals_out(tmp_path: Path) -> None:
    log = RequestLog(tmp_path / "served.jsonl", served_only=True)
    h = harness("wsgi", log, default="2/minute")
    assert [h.call(chat_body())[0] for _ in range(3)] == [200, 200, 429]
    log.close()
    assert [g["decision"] for g in lines(tmp_path / "served.jsonl")] == ["allow", "allow"]


def test_sampling_keeps_whole_streams(tmp_path: Path) -> None:
    """Half the clients, chosen by their id: each recorded client has all of its requests."""
    log = RequestLog(tmp_path / "sampled.jsonl", sample=0.5)
    h = harness("wsgi", log)
    for i in range(100):
        token = make_token(sub=f"user-{i}")
        for _ in range(3):
            assert h.call(chat_body(), token=token)[0] == 200
    log.close()
    per_client: dict[str, int] = {}
    for g in lines(tmp_path / "sampled.jsonl"):
        per_client[str(g["client"])] = per_client.get(str(g["client"]), 0) + 1
    assert 30 <= len(per_client) <= 70
    assert set(per_client.values()) == {3}


def test_a_writer_that_falls_behind_drops_lines_and_never_holds_a_request(tmp_path: Path) -> None:
    """The file is held (as by a stalled disk): the queue of 5 fills, the next lines are
    dropped and counted, and every request is answered at once; once the file is free the
    queued lines are written."""
    log = RequestLog(tmp_path / "slow.jsonl", queue_size=5)
    h = harness("wsgi", log)
    assert h.call(chat_body())[0] == 200  # the writer starts with the first line
    log.flush()
    assert log._writer is not None
    handler = log._writer.handler
    handler.acquire()  # the writer thread blocks in its next write
    try:
        start = time.monotonic()
        assert all(h.call(chat_body())[0] == 200 for _ in range(50))
        assert time.monotonic() - start < 10
    finally:
        handler.release()
    log.close()
    # the writer holds at most one batch (no more than the queue held) while the file is held
    assert log.dropped >= 50 - 2 * 5 - 1 and log.written == 51 - log.dropped
    assert len(lines(tmp_path / "slow.jsonl")) == log.written


def test_the_file_rotates_and_every_rotated_file_is_owner_only(tmp_path: Path) -> None:
    """``max_bytes`` rotates the file (``.1``, ``.2`` ...): every line is in one of the files,
    whole, and the rotated files are created readable by their owner only too."""
    log = RequestLog(tmp_path / "r.jsonl", max_bytes=2000, backups=50)
    h = harness("wsgi", log)
    for i in range(30):
        assert h.call(chat_body(f"question {i}"))[0] == 200
    log.close()
    files = sorted(tmp_path.glob("r.jsonl*"))
    assert len(files) >= 2  # a batch of lines goes to one file: files may pass max_bytes by a batch
    got = [line for f in files for line in lines(f)]
    assert len(got) == 30 == log.written and log.failed == 0
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)


def test_a_write_that_fails_is_counted_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A file that refuses writes (here a full device, ``/dev/full``): the request is served,
    the line counted as failed with one warning, and nothing is counted as written."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    log = RequestLog("/dev/full")
    h = harness("wsgi", log)
    with caplog.at_level("WARNING", logger="distillguard.request_log"):
        assert [h.call(chat_body())[0] for _ in range(3)] == [200, 200, 200]
        log.close()
    assert log.failed == 3 and log.written == 0
    assert len([r for r in caplog.records if "could not be written" in r.getMessage()]) == 1


def test_settings_are_checked_when_built(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="sample"):
        RequestLog(tmp_path / "x.jsonl", sample=0.0)
    with pytest.raises(ConfigurationError, match="queue_size"):
        RequestLog(tmp_path / "x.jsonl", queue_size=0)
    with pytest.raises(ConfigurationError, match="no directory"):
        RequestLog(tmp_path / "missing-dir" / "x.jsonl")
    with pytest.raises(ConfigurationError, match="is a directory"):
        RequestLog(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.geteuid() != 0:  # root writes anywhere
        with pytest.raises(ConfigurationError, match="not writable"):
            RequestLog(locked / "x.jsonl")
    RequestLog(tmp_path / "later.jsonl").close()
    assert not (tmp_path / "later.jsonl").exists()  # nothing recorded: no file


def test_a_forked_worker_writes_its_own_file(tmp_path: Path) -> None:
    """A server that builds the guard before forking its workers (``{pid}`` in the path): the
    worker's lines reach a file of its own, written by a writer of its own."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from distillguard.decision import Action, Decision
        from distillguard.identity import Identity
        from distillguard.query import parse_query
        from distillguard.request import GuardRequest
        from distillguard.request_log import RequestLog

        log = RequestLog({str(tmp_path / "w-{pid}.jsonl")!r})
        body = b'{{"model": "m", "prompt": "hi"}}'
        request = GuardRequest(method="POST", path="/v1/completions", authorization=None,
            content_type="application/json", body=body, client_address=None, user_agent=None,
            timestamp=1.0)
        decision = Decision(action=Action.ALLOW, identity=Identity(client_id="c"),
            query=parse_query(body, "application/json", "/v1/completions"))
        pid = os.fork()
        if pid == 0:
            log(decision, request)
            log.close()
            os._exit(0 if log.written == 1 else 3)
        _, status = os.waitpid(pid, 0)
        print(pid, os.waitstatus_to_exitcode(status))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    child, code = done.stdout.split()
    assert code == "0"
    (line,) = lines(tmp_path / f"w-{child}.jsonl")
    assert line["client"] == "c" and line["body"] == {"model": "m", "prompt": "hi"}
    assert len(list(tmp_path.glob("w-*.jsonl"))) == 1  # the parent recorded nothing: no file


PERSON = [
    "How do I fix a flat tyre on a road bike?",
    "What can I cook tonight with leeks, potatoes and some cheese?",
    "Can you explain why my electricity bill doubled in January?",
    "Write a short birthday poem for my aunt who loves gardening.",
    "Is it worth learning Rust if I already know Go?",
    "Summarise the causes of the French revolution in a paragraph.",
    "my python script says KeyError: 'name' when reading a csv, why",
    "Translate 'where is the train station' into Portuguese please",
    "What's a good stretching routine after running 10 km?",
    "Help me word an email asking my landlord to fix the heating.",
    "Which houseplants survive in a dark north-facing room?",
    "Explain the difference between a Roth IRA and a traditional IRA.",
    "Give me three ideas for a rainy Sunday with two kids under five.",
    "Why does bread go stale faster in the fridge?",
    "Suggest a name for a small bakery in a seaside town.",
    "How long should I boil an egg for a runny yolk?",
]


def test_the_log_replays_and_calibrates(tmp_path: Path) -> None:
    """Recorded traffic goes straight into ``distillguard replay`` and ``calibrate``: a client
    sweeping one template is flagged there, the benign one is not."""
    log = RequestLog(tmp_path / "traffic.jsonl")
    h = harness("wsgi", log)
    sweeper, person = make_token(sub="sweeper"), make_token(sub="person")
    topics = ["rivers", "taxes", "jazz", "volcanoes", "chess", "bread", "comets", "tides"] * 8
    for i, topic in enumerate(topics):
        prompt = f"Write a detailed encyclopedia entry about {topic} number {i}."
        assert h.call(chat_body(prompt), token=sweeper)[0] == 200
    for question in PERSON:
        assert h.call(chat_body(question), token=person)[0] == 200
    log.close()
    report, html = tmp_path / "report.json", tmp_path / "report.html"
    assert main(["replay", str(tmp_path / "traffic.jsonl"), "--json", str(report), "--html", str(html)]) == 0
    doc = json.loads(report.read_text())
    clients = {c["client"]: c for c in doc["clients"]}
    assert clients["sweeper"]["requests"] == 64 and clients["person"]["requests"] == len(PERSON)
    assert clients["sweeper"]["flagged"] and not clients["person"]["flagged"]
    # the guard that recorded the log ran no detector: the replay's verdicts against its own
    assert clients["sweeper"]["online"] == {"allow": 64}
    assert clients["person"]["online"] == {"allow": len(PERSON)}
    assert doc["summary"]["online"] == {
        "clients": 2,
        "flagged_clients": 0,
        "flagged_now_only": 1,
        "flagged_then_only": 0,
    }
    page = html.read_text()
    assert "decided online" in page and "this replay flags 1 of them that were not" in page
    out = tmp_path / "thresholds.json"
    assert main(["calibrate", str(tmp_path / "traffic.jsonl"), "--out", str(out)]) == 0
    thresholds = json.loads(out.read_text())["thresholds"]
    assert thresholds and all(0.0 < v <= 1.0 for v in thresholds.values())
