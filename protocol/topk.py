"""How top-k messages travel: the codec entries of the train config (arrays: fedcodec.topk)."""

from __future__ import annotations

from protocol import keys

CODEC = "topk"


def codec_entries(p_up: float, error_feedback: bool) -> dict:
    """The train ConfigRecord entries that ask a client for its top `p_up` entries."""
    return {keys.CODEC: CODEC, keys.TOPK_P_UP: p_up, keys.TOPK_ERROR_FEEDBACK: error_feedback}
