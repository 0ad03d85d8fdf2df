"""Smoothing of class probabilities over recent windows, and top-k selection.

`--smoothing` takes `ema:ALPHA` (exponential moving average; ALPHA in (0, 1] is the
weight of the newest window), `mean:K` (mean of the last K windows) or `none`.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import numpy as np

from stream.errors import UserError


class Smoother:
    """Holds the state of one smoothing method; `update(probs)` returns smoothed probs."""

    def __init__(self, spec: str):
        self.spec = spec
        kind, _, arg = spec.partition(":")
        self.kind = kind
        self._ema: np.ndarray | None = None
        self._recent: collections.deque[np.ndarray] | None = None
        try:
            if kind == "none" and not arg:
                return
            if kind == "ema":
                self.alpha = float(arg)
                if not 0.0 < self.alpha <= 1.0:
                    raise ValueError
                return
            if kind == "mean":
                k = int(arg)
                if k < 1:
                    raise ValueError
                self._recent = collections.deque(maxlen=k)
                return
        except ValueError:
            pass
        raise UserError(
            f"--smoothing {spec!r} is not understood: use ema:ALPHA with 0 < ALPHA <= 1, "
            "mean:K with K >= 1, or none"
        )

    def update(self, probs: np.ndarray) -> np.ndarray:
        if self.kind == "ema":
            if self._ema is None:
                self._ema = probs.astype(np.float64)
            else:
                self._ema = self.alpha * probs + (1.0 - self.alpha) * self._ema
            return self._ema
        if self.kind == "mean":
            self._recent.append(probs.astype(np.float64))
            return np.mean(self._recent, axis=0)
        return probs


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


def top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[dict]:
    """The k best classes as the wire format's [{label, index, score}], best first."""
    k = min(k, len(probs))
    idx = np.argpartition(-probs, k - 1)[:k]
    idx = idx[np.argsort(-probs[idx], kind="stable")]
    return [{"label": labels[i], "index": int(i), "score": float(probs[i])} for i in idx]
