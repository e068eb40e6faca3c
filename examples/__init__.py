"""Runnable examples: an OpenAI-compatible mock model guarded by distillguard (FastAPI and Flask)."""
