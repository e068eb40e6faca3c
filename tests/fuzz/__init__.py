"""Coverage-guided fuzz targets (atheris), run for a bounded time by ``tests/test_fuzz.py``."""
