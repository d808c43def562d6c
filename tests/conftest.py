"""Every test process computes on the kernel path the package's commands pin (chapter 07c), before any test module
imports torch: a run trained here and one trained by `python -m moe_study` or a study's notebook agree bit for bit."""
from moe_study.environment import pin_kernels

pin_kernels()

import json
from pathlib import Path


def _refuse(constant): raise ValueError(f"{constant} is not JSON (strict parsers such as JSON.parse and jq refuse it)")


def load_json_strict(path) -> object:
    "A JSON file read as a strict parser reads it: a bare NaN, Infinity or -Infinity is an error."
    return json.loads(Path(path).read_text(), parse_constant=_refuse)
