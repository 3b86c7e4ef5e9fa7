"""The web page in a real headless Chromium: choose an image, see the verdict
the Python API gives, the overlay displayed, and API errors shown; and the
view of the line, which lists what other clients sent and the drift state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
REQUIRED = os.environ.get("RADAR_REQUIRE_BROWSER") == "1"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _unavailable(reason: str) -> None:
    """Skip, unless CI demands the browser test (RADAR_REQUIRE_BROWSER=1)."""
    if REQUIRED:
        pytest.fail(f"RADAR_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(reason)


try:
    from playwright.sync_api import sync_playwright
except ImportError:
    sync_playwright = None

try:
    import httpx  # (the server's stack, checked together)

    from radar_ad.apps.serve import background_server, create_app
except ImportError as exc:
    background_server = create_app = None
    _missing_server = f"radar serve's dependencies are missing ({exc.name})"


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        _unavailable("the playwright package is not installed (pip install playwright)")
    if create_app is None:
        _unavailable(_missing_server)
    if not CHROMIUM.is_file():
        _unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def url(fitted, browser):
    radar, _ = fitted
    with background_server(create_app(radar)) as base:
        yield base


def _extreme(radar, folder: Path, pick) -> tuple[Path, str]:
    """The image of ``folder`` the model scores lowest/highest (``pick``),
    with its verdict, for a telling screenshot."""
    scored = [(radar.predict(path), path) for path in sorted(folder.glob("*.png"))]
    prediction, path = pick(scored, key=lambda item: item[0].score)
    return path, "anomalous" if prediction.is_anomalous else "normal"


def _wait_completed(page, n: int) -> str:
    page.wait_for_selector(f'#result[data-completed="{n}"]', state="attached", timeout=60_000)
    return page.get_attribute("#result", "data-state")


def test_page_shows_verdicts_maps_and_errors(browser, url, fitted, surfaces, tmp_path):
    radar, _ = fitted
    normal, normal_verdict = _extreme(radar, surfaces / "test" / "good", min)
    defect, defect_verdict = _extreme(radar, surfaces / "test" / "blob", max)
    page = browser.new_page(viewport={"width": 1100, "height": 820})
    try:
        page.goto(url)
        page.wait_for_function("document.getElementById('model-info').textContent.includes('patch')")
        for n, (path, verdict) in enumerate([(normal, normal_verdict), (defect, defect_verdict)], start=1):
            page.set_input_files("#file", str(path))
            assert _wait_completed(page, n) == "done"
            assert page.inner_text("#verdict") == verdict
            assert float(page.text_content("#score")) == pytest.approx(radar.predict(path).score, abs=1e-4)
            page.wait_for_function("['overlay', 'anomaly-map', 'mask'].every(id => "
                                   "document.getElementById(id).complete && "
                                   "document.getElementById(id).naturalWidth === 64)", timeout=30_000)
            assert page.is_visible("#overlay") and page.is_hidden("#error")
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "serve-page.png"
        page.screenshot(path=str(screenshot), full_page=True)
        print(f"screenshot: {screenshot}")

        page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"})
        assert _wait_completed(page, 3) == "error"
        assert "unsupported file type" in page.text_content("#error") and page.is_visible("#error")
        assert page.is_hidden("#result")
    finally:
        page.close()


def test_page_shows_the_line_that_other_clients_send(browser, fitted, surfaces):
    """Five images posted by another client appear on an open page by
    themselves, newest first, with their verdicts, p-values and thumbnails,
    the anomaly rate and the drift state."""
    radar, _ = fitted
    good = sorted((surfaces / "test" / "good").glob("*.png"))[:3]
    defects = sorted((surfaces / "test" / "crack").glob("*.png"))[:2]
    with background_server(create_app(radar)) as base, httpx.Client(base_url=base, timeout=60) as http:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        try:
            page.goto(base)
            page.wait_for_function("document.getElementById('drift-state').dataset.alarm === 'false'")
            assert page.get_attribute("#line", "data-count") == "0" and page.is_visible("#line-empty")
            answers = []
            for path in [good[0], defects[0], good[1], defects[1], good[2]]:
                response = http.post("/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
                assert response.status_code == 200, response.text
                answers.append(response.json())
            page.wait_for_selector('#line[data-count="5"]', state="attached", timeout=30_000)
            items = page.query_selector_all("#recent .recent-item")
            assert [item.get_attribute("data-verdict") for item in items] == [a["verdict"] for a in answers[::-1]]
            assert [item.query_selector(".p-value").inner_text() for item in items] == \
                [f"p = {a['p_value']:.4f}" for a in answers[::-1]]
            page.wait_for_function("[...document.querySelectorAll('#recent img')].every(img => img.complete && "
                                   "img.naturalWidth === 64)", timeout=30_000)
            anomalous = sum(a["verdict"] == "anomalous" for a in answers)
            assert page.inner_text("#line-images") == "5" and page.inner_text("#line-anomalous") == str(anomalous)
            assert page.inner_text("#line-rate") == f"{100 * anomalous / 5:.1f} % of the last 5"
            drift = http.get("/drift").json()
            page.wait_for_function(f"document.getElementById('drift-summary').textContent.includes("
                                   f"'{drift['images_tested']} of 5 images tested')", timeout=30_000)
            assert page.inner_text("#drift-state") == "no drift"
            shown = float(page.inner_text("#drift-martingale").split(" / ")[0])
            assert shown == pytest.approx(drift["martingale"], rel=5e-3)
            assert page.is_hidden("#line-empty")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-line.png"), full_page=True)
        finally:
            page.close()
