"""The HTML report (`zeros-conformance run --html`): self-contained, opened in a real browser.

The browser test renders reports in headless Chromium (Debian's ``chromium``, which ``.ci/run``
installs) with a small script put in front of the page: it records script and resource errors
and Content-Security-Policy violations, and after the load event writes what it found (errors,
images and how many decoded) into the DOM that ``--dump-dom`` prints.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from zeros_conformance import Context, Measurement, Outcome, cli, compare, html_report, requirement

BACKENDS = Path(__file__).parent / "backends"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=10000",
]
PROBE = """<script>
window.__problems = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  __problems.push("error: " + (e.message || (t && (t.src || t.href)) || "a resource"));
}, true);
document.addEventListener("securitypolicyviolation", function (e) {
  __problems.push("blocked by the page's policy: " + e.blockedURI);
});
window.addEventListener("load", function () {
  setTimeout(function () {
    var images = Array.prototype.slice.call(document.images);
    var found = {
      problems: __problems,
      images: images.length,
      decoded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length,
      verdict: (document.getElementById("verdict") || {}).textContent || null,
      cards: document.querySelectorAll("details[id^=req-]").length
    };
    var out = document.createElement("pre");
    out.id = "browser-check";
    out.textContent = JSON.stringify(found);
    document.body.appendChild(out);
  }, 50);
});
</script>"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    return found


def open_in_browser(page: Path) -> dict[str, Any]:
    """What the probe found when Chromium loaded `page` (a copy with the probe in front)."""
    text = page.read_text(encoding="utf-8")
    probed = page.with_name(page.stem + "-probed.html")
    probed.write_text(text.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="zeros-chromium-") as profile:
        done = subprocess.run(
            [
                chromium(),
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--dump-dom",
                probed.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    found = re.search(r'<pre id="browser-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page did not finish loading: {done.returncode} {done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def run(tmp_path: Path, name: str, target: str, *extra: str) -> tuple[int, Path]:
    page = tmp_path / f"{name}.html"
    code = cli.main(["run", "--backend", target, "--quick", "--html", str(page), *extra])
    return code, page


def test_reports_of_a_conforming_and_a_broken_backend_open_in_a_browser(tmp_path: Path) -> None:
    """The numpy backend (the growing checks and the dtype errors: two figures) and a broken
    backend with failed agreements (the errors by dtype, and the error along the sequence of
    the xfail and of the failure), an xfail and an xpass, each loaded in Chromium: no errors,
    nothing blocked, every image decoded."""
    chromium()
    only = [
        "ZS-ON-TIME",
        "ZS-ON-MEMORY",
        "ZS-ON-DECODE",
        "ZS-ON-STATE",
        "ZS-ACC-GOLDEN",
        "ZS-DTYPE-HALF",
        "ZS-GRAD",
    ]
    code, good = run(tmp_path, "numpy", "numpy", *(a for i in only for a in ("--only", i)))
    assert code == 0
    listing = tmp_path / "xfails.txt"
    listing.write_text("ZS-DEF-WEIGHTS  # f from probabilities\nZS-DEF-ZEROSUM  # passes\n")
    only = ["ZS-DEF-WEIGHTS", "ZS-DEF-ZEROSUM", "ZS-ACC-GOLDEN", "ZS-STREAM-PIECES"]
    code, bad = run(
        tmp_path,
        "broken",
        f"{BACKENDS / 'broken.py'}:first_order_from_probabilities",
        "--xfails",
        str(listing),
        *(a for i in only for a in ("--only", i)),
    )
    assert code == 1
    for page, verdict, images, cards in ((good, "CONFORMS", 2, 7), (bad, "DOES NOT CONFORM", 3, 4)):
        found = open_in_browser(page)
        assert found["problems"] == [], (page.name, found)
        assert found["verdict"] == verdict and found["cards"] == cards
        assert found["images"] == images and found["decoded"] == images, found
    text = bad.read_text(encoding="utf-8")
    assert "Error along the sequence" in text and "f from probabilities" in text
    for status in ("xfail", "xpass", "failed", "not claimed"):
        assert f">{status}</span>" in text, status


def test_the_probe_sees_a_blocked_resource_and_a_broken_image(tmp_path: Path) -> None:
    """The browser test can fail: an outside address is blocked by the report's policy, and
    an image that does not decode is counted as such."""
    chromium()
    page = tmp_path / "page.html"
    report = render([_outcome("ZS-DEF-ZEROSUM", passed=True)])
    page.write_text(
        report.replace(
            "<h2>Requirements</h2>",
            '<img src="https://example.invalid/x.png"><img src="data:image/png;base64,AAAA">'
            "<h2>Requirements</h2>",
        ),
        encoding="utf-8",
    )
    found = open_in_browser(page)
    assert any("example.invalid" in p for p in found["problems"]), found
    assert found["images"] == 2 and found["decoded"] == 0


class _Backend:
    name = "synthetic"
    dtypes = ("float32", "float64")
    device = "cpu"


def _outcome(rid: str, *, passed: bool, rows: list[float] | None = None) -> Outcome:
    details = {} if rows is None else {"row_errors": rows, "rows_per_entry": 1}
    m = Measurement(
        1e-3 if not passed else 1e-12,
        1e-10,
        {"dtype": "float64", "q": [2, 5, 4], "note": "<b>&"},
        passed=passed,
        details=details,
        message="error <here>",
    )
    return Outcome(requirement(rid), "passed" if passed else "failed", [m], 0.5)


def render(outcomes: list[Outcome], **options: Any) -> str:
    ctx = Context(_Backend(), target="my<backend>.py:backend", profile="quick", seed=3)
    return html_report.render(ctx, outcomes, 1.5, **options)


def test_a_report_is_self_contained_and_escaped() -> None:
    text = render(
        [
            _outcome("ZS-ACC-REFERENCE", passed=False, rows=[0.0, 1e-12, 1e-3, np.inf]),
            _outcome("ZS-DEF-ZEROSUM", passed=True),
        ],
        spec_url="https://ex.org/spec/",
    )
    assert "default-src 'none'; img-src data:" in text
    assert "<script" not in text and "<link" not in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert 'href="https://ex.org/spec/#zs-acc-reference"' in text
    assert "my&lt;backend&gt;.py" in text and "&lt;b&gt;&amp;" in text and "<b>&" not in text
    assert "DOES NOT CONFORM" in text and "Error along the sequence" in text
    assert "zeros-conformance run --backend &#x27;my&lt;backend&gt;.py:backend&#x27;" in text


def test_without_matplotlib_the_report_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(html_report._plots, "missing", lambda: "matplotlib is not installed")
    text = render([_outcome("ZS-ACC-REFERENCE", passed=False, rows=[0.0, 1e-3])])
    assert "<img" not in text
    assert 'id="no-figures"' in text and "matplotlib is not installed" in text
    assert "figure left out" in text and "The failing case" in text


def test_a_failed_comparison_records_the_error_of_each_row() -> None:
    """Where the error starts along the sequence: rows before 300 agree, rows after do not;
    a long output keeps the max over runs of rows."""
    ref = np.zeros((2, 1000, 3))
    out = ref.copy()
    out[1, 300:, 2] = 1e-3
    out[0, 900, 0] = np.nan
    result = compare(out, ref, np.ones((2, 1000)), 1e-10)
    assert not result.passed and result.rows_per_entry == 4 and len(result.rows) == 250
    assert result.rows[:75] == (0.0,) * 75 and result.rows[75] == 1e-3
    assert result.rows[225] == np.inf
    assert compare(ref, ref, np.ones((2, 1000)), 1e-10).rows == ()
    recorded = Measurement.of(result, {}).details
    assert recorded["row_errors"][75] == 1e-3 and recorded["rows_per_entry"] == 4


def test_pytest_plugin_writes_the_report(pytester: pytest.Pytester) -> None:
    page = pytester.path / "report.html"
    result = pytester.runpytest(
        "--zeros-backend=reference",
        f"--zeros-html={page}",
        "-k",
        "ZEROSUM or GRAD",
        "-p",
        "no:cacheprovider",
    )
    result.assert_outcomes(passed=1, skipped=1)
    text = page.read_text(encoding="utf-8")
    assert "CONFORMS" in text and 'id="req-zs-def-zerosum"' in text and "ZS-GRAD" in text


def test_the_reproduction_names_the_chosen_dtypes() -> None:
    """A run restricted with --dtype is reproduced with the same restriction."""
    outcome = _outcome("ZS-ACC-REFERENCE", passed=False)
    everything = render([outcome])
    ctx = Context(_Backend(), target="b.py:backend", profile="full", seed=3, dtypes=("float32",))
    restricted = html_report.render(ctx, [outcome], 1.0)
    assert "--dtype" not in everything
    assert "--seed 3 --only ZS-ACC-REFERENCE --dtype float32</code>" in restricted
