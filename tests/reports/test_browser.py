"""The HTML report in a real headless browser (Debian's chromium via Playwright), loaded from a
running service (`lathe api` + `lathe worker` processes): charts present, no request leaves
the service."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support.deploy import deployment, wait_job

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run", "--disable-quic", "--disable-sync"]


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium")
        pytest.skip("chromium not installed (apt-get install chromium)")
    with deployment("embedded", tmp_path_factory.mktemp("browser")) as (client, _env):
        yield client


def test_pipeline_report_renders_with_charts_and_no_outside_requests(service, mlp_onnx, digits_x, tmp_path):
    from playwright.sync_api import sync_playwright

    from sklearn.datasets import load_digits

    c = service
    npz = tmp_path / "d.npz"
    np.savez(npz, x=digits_x[:256], labels=load_digits().target[:256])
    model = c.post("/v1/models", files={"file": ("mlp.onnx", mlp_onnx.read_bytes())}).json()
    ds = c.post("/v1/datasets", files={"file": ("d.npz", npz.read_bytes())}).json()
    quick = {"batch_sizes": [1, 8, 32], "min_runs": 10, "min_seconds": 0.02}
    job = c.post("/v1/jobs", json={"model_id": model["id"], "dataset_id": ds["id"], "steps": [
        {"technique": "quantize.static", "params": {**quick, "samples": 64}},
        {"technique": "benchmark", "params": {**quick, "max_latency_ms": 1.0, "max_seconds": 1}}]}).json()
    job = wait_job(c, job["id"], poll=0.2, timeout=300)
    assert job["status"] == "succeeded", job
    base = str(c.base_url).rstrip("/")
    url = f"{base}/v1/jobs/{job['id']}/report.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_extra_http_headers({"Authorization": c.headers["Authorization"]})
        requested: list[str] = []
        page.on("request", lambda r: requested.append(r.url))
        response = page.goto(url, wait_until="networkidle")
        assert response.status == 200 and response.headers["content-type"].startswith("text/html")
        kinds = page.eval_on_selector_all("svg.chart", "els => els.map(e => e.dataset.chart)")
        assert {"latency", "throughput"} <= set(kinds), kinds
        assert page.locator("svg.chart").first.is_visible()
        assert page.get_by_text(job["id"]).count() >= 1
        shot = os.environ.get("LATHE_REPORT_SCREENSHOT")  # docs/: see README
        if shot:
            page.screenshot(path=shot, full_page=True)
        browser.close()
    outside = [u for u in requested if not (u.startswith(base) or u.startswith("data:") or u.startswith("about:"))]
    assert outside == [] and requested[0] == url
    download = c.get(f"/v1/jobs/{job['id']}/report.html", params={"download": "true"})
    assert download.headers["content-disposition"].startswith("attachment;")


@pytest.mark.parametrize("page_path,rendered", [("/docs", ".opblock"), ("/redoc", "[data-section-id]")])
def test_api_docs_render_with_every_outside_request_blocked(service, page_path, rendered):
    """Swagger UI and ReDoc come from the package, not a CDN: with the outside world blocked
    (as on a host without internet) the operations still render, and Authorize works."""
    from playwright.sync_api import sync_playwright

    base = str(service.base_url).rstrip("/")
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})

        def route(r):
            if r.request.url.startswith(base):
                return r.continue_()
            outside.append(r.request.url)
            return r.abort()

        page.route("**/*", route)
        assert page.goto(base + page_path, wait_until="networkidle").status == 200
        page.wait_for_selector(rendered, timeout=20_000)
        assert page.locator(rendered).count() >= 10  # every route of the API, not an empty shell
        if page_path == "/docs":  # Authorize takes the key, and calls then carry it
            page.get_by_role("button", name="Authorize").first.click()
            page.locator(".modal-ux input").first.fill(service.headers["Authorization"].split()[-1])
            page.locator(".modal-ux button.authorize").click()
            page.locator(".modal-ux button.btn-done").click()
            page.locator("#operations-models-list_models_v1_models_get").click()
            page.get_by_role("button", name="Try it out").click()
            with page.expect_response(lambda r: "/v1/models" in r.url) as answer:
                page.get_by_role("button", name="Execute").click()
            assert answer.value.status == 200
        browser.close()
    # ReDoc's bundled script still asks for its own "powered by" logo; blocked, the page is whole.
    assert [u for u in outside if u != "https://cdn.redoc.ly/redoc/logo-mini.svg"] == [], outside
