"""The detection benchmark: generated attack and benign request logs replayed through the
detectors. Run ``python -m benchmarks.detection`` (see ``docs/detection.md``)."""
