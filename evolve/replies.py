"""Reading structure out of model replies."""

from __future__ import annotations

import json
import re

_FENCE = re.compile(r"```(?:json)?\s*\n(.*?)\n```", re.S)


def json_block(text: str):
    """The first JSON value (object or array, as Python data) in a fenced block of ``text``, else in the
    whole reply; None if there is none. Never raises for a malformed reply."""
    for candidate in [*_FENCE.findall(text), text]:
        candidate = candidate.strip()
        start = min((i for i in (candidate.find("{"), candidate.find("[")) if i >= 0), default=-1)
        if start < 0:
            continue
        try:
            value, _ = json.JSONDecoder().raw_decode(candidate[start:])
            return value
        except json.JSONDecodeError:
            continue
    return None
