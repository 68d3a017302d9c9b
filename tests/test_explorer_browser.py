"""The explorer page in a real headless browser (Debian's chromium + chromedriver, tests/browser.py).

The page loads from a ``file://`` URL with no JavaScript error and fetches nothing; then, as a user,
the test clicks a token, a head, switches the answer, the contrast and the MLP rule, and checks that
every number the page shows equals the caches' number to the printed precision. Skipped only when
the browser is not installed (the reason says how to install it), and never under CI (``CI`` set in
the environment), which installs it (.ci/install-system-packages): there a missing browser fails.
"""

from __future__ import annotations

import os

import pytest

from depass_tl import viz
from depass_tl.viz._explorer_page import DECIMALS
from tests.browser import INSTALL, Browser, find_browser
from tests.explorer_cases import KINDS, explorer_case

pytestmark = pytest.mark.skipif(
    find_browser() is None and not os.environ.get("CI"), reason=f"needs Chromium and chromedriver: {INSTALL}"
)


def assert_shown(text: str, value: float, decimals: int, what: str) -> None:
    """``text`` is ``value`` printed with ``decimals`` digits (the data is rounded to 6 decimals first)."""
    shown = float(text.strip().replace("\u2212", "-"))
    assert abs(shown - value) <= 0.5 * 10**-decimals + 2e-6, f"{what}: the page shows {text!r}, the cache has {value!r}"
    assert len(text.strip().split(".")[-1]) == decimals, f"{what}: {text!r} is not printed with {decimals} decimals"


def _errors(browser: Browser) -> list[dict]:
    return [e for e in browser.log() if e["level"] in ("SEVERE", "ERROR")]


class Expected:
    """The caches' numbers for one (answer, contrast, rule) choice, read through the caches' own API."""

    def __init__(self, case, k: int, c: int | None, rule: str) -> None:
        ids = [x["id"] for x in case.data["candidates"]]
        self.target, self.contrast = ids[k], None if c is None else ids[c]
        rc = case.caches.rules[rule]
        self.rc, self.case = rc, case
        self.tokens = rc.tokens.logit_attrs(self.target, incorrect_tokens=self.contrast)[:, 0].double()
        self.heads = viz.head_grid_data(rc.heads, self.target, incorrect_tokens=self.contrast).values
        clean = case.clean_logits
        self.clean = float(clean[self.target] - (0 if self.contrast is None else clean[self.contrast]))

    def token(self, p: int) -> float:
        return float(self.tokens[self.rc.tokens.component(f"tok{p}")])

    def source(self, l: int, h: int, s: int | None) -> float:
        """What head ``L{l}H{h}`` contributes by reading position ``s`` (None: its output at earlier positions)."""
        dc = self.rc.head_sources[l]
        label = f"L{l}H{h}." + ("earlier" if s is None else f"src{s}")
        return float(dc.logit_attrs(self.target, incorrect_tokens=self.contrast)[dc.component(label), 0])

    def flow(self):
        dc = self.rc.tokens
        return viz.flow_data(dc, self.target, incorrect_tokens=self.contrast, top_k=dc.n_components)


def check_summary_tokens_heads(b: Browser, e: Expected) -> None:
    assert_shown(b.text("#clean-value"), e.clean, DECIMALS["summary"], "the model's clean value")
    assert_shown(b.text("#sum-value"), float(e.tokens.sum()), DECIMALS["summary"], "the sum of the contributions")
    P = len(e.case.str_tokens)
    chips = b.texts(".token .tok-value")
    assert len(chips) == P
    for p in range(P):
        assert_shown(chips[p], e.token(p), DECIMALS["chip"], f"token {p}")
    L, H = e.heads.shape
    cells = b.js("return Array.from(document.querySelectorAll('td.head'), "
                 "e => [Number(e.dataset.layer), Number(e.dataset.head), e.textContent])")
    assert len(cells) == L * H
    for l, h, text in cells:
        assert_shown(text, float(e.heads[l, h]), DECIMALS["cell"], f"head L{l}H{h}")


def check_token_details(b: Browser, e: Expected, p: int) -> None:
    assert f"(position {p})" in b.text("#details-title")
    flow = e.flow()
    row = flow.series.index(f"tok{p}")
    for j, label in enumerate(flow.hook_labels):
        assert b.text(f'tr[data-key="hook-{j}"] td.text') == label
        assert_shown(b.text(f'tr[data-key="hook-{j}"] td.value'), float(flow.projection[row, j]), DECIMALS["detail"],
                     f"token {p} at {flow.hooks[j]}")
        assert_shown(b.text(f'tr[data-key="hook-{j}"] td.whole'), float(flow.total_projection[j]), DECIMALS["detail"],
                     f"the whole stream at {flow.hooks[j]}")
    assert_shown(b.text('tr[data-key="logit"] td.value'), e.token(p), DECIMALS["detail"], f"token {p}'s logit")


def check_head_details(b: Browser, e: Expected, l: int, h: int) -> None:
    assert b.text("#details-title").startswith(f"Head L{l}H{h}:")
    P = len(e.case.str_tokens)
    parts = [e.source(l, h, s) for s in range(P)]
    attention = e.case.caches.attention[0, l, h]
    for s in range(P):
        assert_shown(b.text(f'tr[data-key="source-{s}"] td.value'), parts[s], DECIMALS["detail"], f"L{l}H{h} from {s}")
        assert_shown(b.text(f'tr[data-key="source-{s}"] td.attention'), float(attention[s]), DECIMALS["attention"],
                     f"L{l}H{h}'s attention to {s}")
    earlier, digits = e.source(l, h, None), DECIMALS["detail"]
    assert_shown(b.text('tr[data-key="earlier"] td.value'), earlier, digits, f"L{l}H{h} at earlier positions")
    assert_shown(b.text('tr[data-key="sum"] td.value'), sum(parts) + earlier, digits, "the sum of the parts")
    assert_shown(b.text('tr[data-key="grid"] td.value'), float(e.heads[l, h]), DECIMALS["detail"], "the head")


@pytest.mark.parametrize("kind", KINDS)
def test_the_page_shows_the_caches_numbers_as_the_user_clicks(kind: str, tmp_path) -> None:
    case = explorer_case(kind)
    page = viz.save_explorer(case.data, tmp_path / "explorer.html")
    with Browser() as b:
        b.open(page)
        assert _errors(b) == []
        # self-contained: the page fetched nothing (no script, style, font or image requests)
        assert b.js("return performance.getEntriesByType('resource').map(e => e.name)") == []
        assert b.js("return document.querySelectorAll('script[src], link, img, iframe').length") == 0

        # first view: the answer against the contrast, the default rule
        assert [b.js("return document.getElementById('target').value"),
                b.js("return document.getElementById('contrast').value")] == ["0", "1"]
        rule = case.data["rule"]
        pressed = b.js("return document.querySelector('button[aria-pressed=\"true\"]').dataset.rule")
        assert pressed == rule
        e = Expected(case, 0, 1, rule)
        assert show(case.data["candidates"][0]["text"]) in b.text("#headline")
        check_summary_tokens_heads(b, e)

        # click a token: its contribution through the layers
        b.click('.token[data-pos="2"]')
        assert b.js("return document.querySelector('.token.selected').dataset.pos") == "2"
        check_token_details(b, e, 2)

        # click a head: which positions its contribution comes from
        l, h = 0, 1  # a first-layer head: its output at earlier positions matters too
        b.click(f'td.head[data-layer="{l}"][data-head="{h}"]')
        check_head_details(b, e, l, h)

        # another answer (still against the contrast), then a single logit
        b.select("#target", "2")
        e = Expected(case, 2, 1, rule)
        check_summary_tokens_heads(b, e)
        check_head_details(b, e, l, h)  # the selection stays, with the new numbers
        b.select("#contrast", "")
        e = Expected(case, 2, None, rule)
        check_summary_tokens_heads(b, e)
        assert "rather than" not in b.text("#headline")

        # the other MLP rules, computed on the same capture
        b.select("#contrast", "3")
        for rule in ("ratio", "max"):
            b.click(f'button[data-rule="{rule}"]')
            e = Expected(case, 2, 3, rule)
            check_summary_tokens_heads(b, e)
            check_head_details(b, e, l, h)
        b.click('button[data-rule="ratio"]')  # linear: the parts add up to the head to every printed digit
        assert b.text('tr[data-key="sum"] td.value') == b.text('tr[data-key="grid"] td.value')
        b.click('.token[data-pos="0"]')
        check_token_details(b, Expected(case, 2, 3, "ratio"), 0)
        # the target's own option cannot be picked as the contrast
        assert b.js("return document.querySelector('#contrast option[value=\"2\"]').disabled") is True
        assert _errors(b) == []


def test_the_page_fits_a_narrow_window(tmp_path) -> None:
    """Responsive: at phone width nothing overflows sideways (panels stack, charts scale)."""
    case = explorer_case("gpt2")
    page = viz.save_explorer(case.data, tmp_path / "explorer.html")
    with Browser(width=420, height=900) as b:
        b.open(page)
        b.click('td.head[data-layer="0"][data-head="0"]')
        assert b.js("return document.documentElement.scrollWidth") <= b.js("return window.innerWidth")
        assert _errors(b) == []


def show(text: str) -> str:
    """How the page prints a token (its text without surrounding spaces)."""
    return text.strip() or repr(text)
