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


def section_headings(page: str) -> list[str]:
    "The text of each <h2> of a rendered report, in order: its sections as a reader meets them."
    from html.parser import HTMLParser

    class Headings(HTMLParser):
        def __init__(self):
            super().__init__(); self.found, self.inside = [], False
        def handle_starttag(self, tag, attrs):
            if tag == 'h2': self.inside = True; self.found.append('')
            elif tag == 'a' and self.inside: self.inside = 'anchor'        # nbconvert's ¶ link
        def handle_endtag(self, tag):
            if tag == 'h2': self.inside = False
            elif tag == 'a' and self.inside == 'anchor': self.inside = True
        def handle_data(self, data):
            if self.inside is True: self.found[-1] += data

    p = Headings(); p.feed(page)
    return [h.strip() for h in p.found]
