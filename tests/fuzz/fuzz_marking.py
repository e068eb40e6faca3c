"""Fuzz target: the answer rewriter (SSE event splitter, JSON documents, log-probability
stripping, the watermark, gzip and deflate decoding) on arbitrary bytes cut at arbitrary places.

Run: ``python -m tests.fuzz.fuzz_marking -max_total_time=60``. No input may raise; an answer
that is not an event stream or a JSON document comes out with the same bytes.
"""

from __future__ import annotations

import sys
import zlib

import atheris

with atheris.instrument_imports(include=["distillguard"]):
    from distillguard._marking import ResponseMarking
    from distillguard.watermark import Watermark

WATERMARK = Watermark(b"fuzz-watermark-key-0123456789abcdef")
TYPES = ["text/event-stream", "application/json", "text/plain"]
ENCODINGS = ["", "identity", "gzip", "deflate"]


def TestOneInput(data: bytes) -> None:  # the name atheris calls
    fdp = atheris.FuzzedDataProvider(data)
    content_type = fdp.PickValueInList(TYPES)
    encoding = fdp.PickValueInList(ENCODINGS)
    strip = fdp.ConsumeBool()
    watermark = WATERMARK if fdp.ConsumeBool() else None
    compress = fdp.ConsumeBool()  # a valid compressed stream, or the raw bytes as they come
    cuts = sorted({fdp.ConsumeIntInRange(0, 4096) for _ in range(fdp.ConsumeIntInRange(0, 8))})
    payload = fdp.ConsumeBytes(fdp.remaining_bytes())
    if encoding in ("gzip", "deflate") and compress:
        payload = zlib.compress(payload, wbits=31 if encoding == "gzip" else 15)
    marking = ResponseMarking(watermark, strip)
    if not marking.start(200, content_type, encoding):
        assert content_type == "text/plain"
        return
    bounds = [c for c in cuts if c < len(payload)]
    pieces = [payload[a:b] for a, b in zip([0, *bounds], [*bounds, len(payload)], strict=True)]
    out = b"".join(marking.feed(piece) for piece in pieces) + marking.end()
    assert isinstance(out, bytes)


if __name__ == "__main__":
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
