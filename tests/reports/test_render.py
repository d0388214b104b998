"""The HTML report page: every engine report shape renders, the page is self-contained, user
strings are escaped, partial reports degrade to "n/a", and output size stays bounded.
Pure-function tests (no database, broker or worker): the renderer takes plain dicts."""

from __future__ import annotations

import copy
import json
import random
import subprocess
import sys
from html.parser import HTMLParser

import pytest

from app.reports.render import render_report_html
from app.reports.svg import Point, pareto_front
from app.reports.svg_scale import log_ticks, tick_labels
from tests.support import ROOT

DATA = ROOT / "tests" / "data" / "reports"
SAMPLES = sorted(p.stem for p in DATA.glob("*.json"))
EXPECTED_CHARTS = {
    "benchmark": {"latency", "throughput"},
    "quantize.dynamic": {"latency", "throughput"},
    "quantize.static": {"latency", "throughput"},
    "quantize.auto": {"latency", "throughput", "pareto"},
    "evaluate": set(),
    "pipeline": {"latency", "throughput", "pareto"},
    "compare": {"latency", "throughput", "pareto"},
}
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
JOB = {"id": "job1", "model_id": "m1", "technique": "x", "status": "succeeded", "params": {"a": 1},
       "created_at": "2026-11-28T08:00:00Z"}


class Page(HTMLParser):
    """Collects tags and attributes, and fails on unbalanced or mismatched tags."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.errors: list[str] = []
        self.feed(html)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> does not close {self.stack[-1:] or 'anything'}")
        else:
            self.stack.pop()

    def charts(self) -> list[dict]:
        return [a for t, a in self.tags if t == "svg" and a.get("class") == "chart"]


def load(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def render(report, job=JOB, lineage=None) -> tuple[str, Page]:
    html = render_report_html(report, job=job, lineage=lineage)
    page = Page(html)
    assert page.errors == [], page.errors[:5]
    # A section that raised is replaced by a note; none of our inputs should get there.
    assert "could not be rendered" not in html
    return html, page


def assert_self_contained(html: str, page: Page) -> None:
    for tag, attrs in page.tags:
        assert tag not in {"script", "link", "img", "iframe", "object", "embed", "base", "form"}, tag
        for key, value in attrs.items():
            assert not key.startswith("on"), (tag, key)
            if key in {"src", "href", "xlink:href", "action", "srcset", "poster", "data"}:
                # In-page links only, and each one lands on a section that exists.
                assert value and value.startswith("#") and f'id="{value[1:]}"' in html, (tag, key, value)
    lowered = html.lower()
    assert "<script" not in lowered and "url(" not in lowered and "@import" not in lowered


@pytest.mark.parametrize("name", SAMPLES)
def test_every_sample_renders_with_its_charts(name):
    html, page = render(load(name))
    charts = page.charts()
    assert {c.get("data-chart") for c in charts} == EXPECTED_CHARTS[name]
    for c in charts:
        assert c.get("aria-label")
    assert html.count('<svg class="chart"') == len(charts)
    # Every chart's first child is its <title>.
    for i, (tag, attrs) in enumerate(page.tags):
        if tag == "svg" and attrs.get("class") == "chart":
            assert page.tags[i + 1][0] == "title"
    assert_self_contained(html, page)
    assert 'id="environment"' in html and "AMD EPYC" in html
    assert "<details" in html and "Raw JSON" in html


def test_summary_card_numbers():
    html, _ = render(load("quantize.dynamic"))
    assert "0.85× – 0.94×" in html and "0.32×" in html and "top-1 0.9961 → 0.9961" in html
    assert "✗ not faster" in html and "✓ smaller" in html and "✓ within tolerance" in html
    html, _ = render(load("compare"))
    assert "2.00× faster" in html and "top-1 0.98 → 0.975" in html


def test_pipeline_shows_every_step():
    report = load("pipeline")
    html, page = render(report)
    assert "Step 1 · quantize.static" in html and "Step 2 · benchmark" in html
    # Each step reuses the per-report charts: 1 overview latency + 1 per step, throughput per step.
    kinds = [c["data-chart"] for c in page.charts()]
    assert kinds.count("latency") == 3 and kinds.count("throughput") == 2 and kinds.count("pareto") == 1


def test_quantize_auto_lists_every_candidate_and_layer():
    html, _ = render(load("quantize.auto"))
    assert "dynamic-per-channel" in html and "chosen" in html and "/0/Gemm" in html and "/2/Gemm" in html


def test_benchmark_recommendation_sla_and_noisy_points():
    report = load("benchmark")
    for i, r in enumerate(report["results"]):
        r.update(provider="CPUExecutionProvider", ci_rel_half_width=0.25 if i == 1 else 0.01, noisy=i == 1)
    report["recommendation"] = {"sla": {"max_latency_ms": 0.02, "min_throughput": None, "latency_stat": "p99"},
                                "best": {"batch_size": 32, "threads": 2, "provider": "CPUExecutionProvider",
                                         "p99_ms": 0.0233, "throughput_items_per_s": 1917304.16},
                                "reason": "highest throughput <within> the SLA"}
    html, _ = render(report)
    assert "Recommended" in html and "highest throughput &lt;within&gt; the SLA" in html
    assert 'class="ref"' in html and "SLA p99 ≤ 0.02 ms" in html  # the vertical SLA line
    assert 'class="hl"' in html  # the recommended point is ringed
    assert 'fill="#fff"' in html and "noisy" in html and "±25.0%" in html  # marked, not hidden
    report["recommendation"]["best"] = None
    html, _ = render(report)
    assert "No configuration meets the SLA" in html


EVIL = "<script>alert(1)</script>"


def test_user_strings_are_escaped_everywhere():
    report = load("compare")
    report["models"][0]["label"] = EVIL
    report["notes"] = [EVIL]
    pipeline = load("pipeline")
    pipeline["steps"][0]["technique"] = EVIL
    pipeline["steps"][0]["params"] = {"x": '"><img src=x onerror=alert(1)>'}
    job = {**JOB, "params": {"name": EVIL}, "status": "failed", "error": {"type": EVIL, "detail": "</pre>" + EVIL}}
    lineage = {"model": {"id": EVIL, "name": EVIL}, "ancestors": [{"id": "a", "name": EVIL, "job": None}],
               "descendants": [{"id": "d", "name": EVIL, "job": {"technique": EVIL}, "children": []}]}
    for rep in (report, pipeline):
        html, page = render(rep, job=job, lineage=lineage)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert_self_contained(html, page)
        assert "<img" not in html and "{" + "EVIL" not in html


@pytest.mark.parametrize("name", SAMPLES)
def test_reports_with_most_fields_missing_still_render(name):
    report = load(name)
    render({k: report[k] for k in ("technique", "schema_version")})
    render({})
    render(None, job=None, lineage=None)  # type: ignore[arg-type]
    # Random deletions and wrong types all the way down: degrade to "n/a", never raise.
    rng = random.Random(name)
    lineage = {"model": {"id": 1}, "ancestors": [{}], "descendants": [{"children": [None]}]}
    for _ in range(25):
        render(_mangle(copy.deepcopy(report), rng), lineage=_mangle(lineage, rng))


def _mangle(value, rng: random.Random):
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            roll = rng.random()
            if roll < 0.25:
                continue
            out[k] = rng.choice([None, "x", [], {}, -1, float("nan"), True]) if roll < 0.4 else _mangle(v, rng)
        return out
    if isinstance(value, list):
        return [_mangle(v, rng) for v in value if rng.random() > 0.2]
    return value


def test_huge_reports_stay_bounded():
    def bench(n: int) -> dict:
        report = load("benchmark")
        row = report["results"][0]
        report["results"] = [{**row, "batch_size": 1 + i % 64, "threads": 1 + i // 64, "p50_ms": 0.01 * (1 + i % 64)}
                             for i in range(n)]
        return report

    html_1k, page = render(bench(1_000))
    assert "Showing the first 200 of 1,000 measured points" in html_1k
    assert "more points not drawn" in html_1k
    html_10k, _ = render(bench(10_000))
    assert "Raw JSON truncated" in html_10k
    assert len(html_10k) < 1_200_000 and len(html_10k) < 1.6 * len(html_1k)


def test_lineage_reads_from_the_upload_and_is_bounded():
    kids = [{"id": f"k{i}", "name": f"kid{i}", "job": {"technique": "prune"}, "children": []} for i in range(1_000)]
    lineage = {"model": {"id": "m", "name": "current.onnx", "job": {"technique": "quantize.static"}},
               "ancestors": [{"id": "p", "name": "parent.onnx", "job": {"technique": "distill"}},
                             {"id": "r", "name": "root.onnx", "job": None}],
               "descendants": kids, "truncated": True}
    html, _ = render(load("quantize.static"), lineage=lineage)
    assert html.index("root.onnx") < html.index("parent.onnx") < html.index("current.onnx")
    assert "kid199" in html and "kid200" not in html and "more not shown" in html


def test_pareto_front_and_ticks():
    pts = [Point(1, 0.9), Point(2, 0.95), Point(3, 0.94), Point(0.5, 0.8), Point(2, 0.7)]
    assert [(p.x, p.y) for p in pareto_front(pts)] == [(0.5, 0.8), (1, 0.9), (2, 0.95)]
    assert log_ticks(0.005, 3.5) == [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]
    assert log_ticks(1, 32, base=2) == [1, 2, 4, 8, 16, 32]
    assert tick_labels([0, 500_000, 1_000_000, 1_500_000]) == ["0", "500k", "1M", "1.5M"]
    assert tick_labels([0.9998, 0.99985, 0.9999]) == ["0.9998", "0.99985", "0.9999"]


def test_a_failing_section_costs_that_section_not_the_page(monkeypatch):
    import app.reports.render as render_mod

    def boom(report):
        raise KeyError("surprise")

    monkeypatch.setattr(render_mod, "charts", boom)
    html = render_report_html(load("benchmark"), job=JOB, lineage=None)
    assert "could not be rendered (KeyError)" in html and "Measured points" in html and not Page(html).errors


def test_renderer_is_a_pure_module():
    # jinja2 is the page's template engine (pure Python, a few ms to import); the rest must stay out.
    code = ("import sys, app.reports.render; heavy = {'fastapi', 'sqlalchemy', 'celery', 'onnx', 'onnxruntime', 'torch', "
            "'numpy'}; print(sorted(heavy & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_stored_reports_are_read_through_their_models():
    """The page reads the typed model: a part that does not match it (a value of the wrong type,
    a field an engine of another version wrote) is left out, the rest still renders, and the raw
    JSON keeps everything."""
    report = load("benchmark")
    report["results"][1]["p50_ms"] = "fast"
    report["results"][2]["from_the_future"] = 1
    report["memory"]["peak_scope"] = "<b>galaxy</b>"
    html, page = render(report)
    assert {c["data-chart"] for c in page.charts()} == {"latency", "throughput"}
    # The row with a wrong p50 is dropped; the unknown field alone, not its row.
    assert html.count("<tr><td>") == len(report["results"]) - 1
    # peak_scope is not one the model knows: shown in the raw JSON only, escaped.
    assert "<th>rss_before_session_bytes</th>" in html and html.count("galaxy") == 1
    assert "&lt;b&gt;galaxy&lt;/b&gt;" in html and "<b>galaxy" not in html
    html, _ = render({"schema_version": 1, "technique": "<i>retired</i>", "x": 1})
    assert "does not match any report schema" in html and "&lt;i&gt;retired&lt;/i&gt;" in html


def test_templates_are_package_data():
    import fnmatch
    import tomllib

    root = ROOT
    patterns = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["app.reports"]
    templates = [p.relative_to(root / "app" / "reports").as_posix() for p in (root / "app/reports/templates").iterdir()]
    assert templates and all(any(fnmatch.fnmatch(t, pat) for pat in patterns) for t in templates)


def test_summary_shows_agreement_inconclusive_speed_and_measurement_flags():
    report = load("quantize.dynamic")
    html, _ = render(report)  # a report of an older engine: no interval, no host load
    assert "top-1 agreement 1 on 256 samples" in html and "speed inconclusive" not in html
    report["fidelity"]["outputs"]["logits"]["top1_agreement"] = 0.875
    report["fidelity"].update(samples_requested=512, samples_note="256 of the 512 requested samples were compared: the dataset has 256 samples")
    busy = {"cores": 2, "wall_s": 3.0, "others_cpu_percent": 80.0, "busy": True,
            "summary": "host busy: other processes used 80% of the CPU (1.6 of 2 cores)"}
    report["host_load"] = busy
    for c in report["comparison"]:
        c["speedup_ci"] = {"speedup": c["speedup"], "ci_low": 0.7, "ci_high": 1.2, "rounds": 40,
                           "verdict": "inconclusive", "reason": "the interval straddles 1"}
    report["comparison"][0]["tail_outliers"] = ["parent: p99 13.5 ms is 270x the p50 0.05 ms"]
    report["verdict"].update(faster=None, speed="inconclusive")
    html, _ = render(report)
    assert "top-1 agreement 0.875 on 256 samples" in html and "✓ within tolerance" in html
    assert "speed inconclusive" in html and "not faster" not in html
    assert "host busy: other processes used 80%" in html and "batch 1: parent: p99 13.5 ms" in html
    assert "256 of the 512 requested" in html
    assert "0.70× – 1.20×" in html and ">inconclusive<" in html and "tail outliers" in html
    assert '<span class="bad">0.85×' not in html and '<span class="">0.85×' in html  # not red: unproven


def test_compare_table_shows_each_speedup_with_its_interval():
    report = load("compare")
    twin = next(m["id"] for m in report["models"][1:])
    point = report["points"][0]
    point["results"][twin]["vs_reference"] = {"reference": report["models"][0]["id"], "basis": "wall",
                                              "speedup": 2.0, "ci_low": 1.9, "ci_high": 2.1,
                                              "rounds": 30, "verdict": "faster", "reason": "faster: 2.00x"}
    html, _ = render(report)
    assert "speedup (95% interval)" in html and '<span class="good">2.00×</span> (1.90× – 2.10×, faster)' in html
