"""A slice of the compatibility matrix (benchmarks/compat.py), run in CI: a few corpus entries
(an IR 3 model-zoo style CNN, a TorchScript opset-9 CNN, a dynamo-exported CNN, MiniLM with its
real weights) x the techniques every user tries first, with the matrix's own cell code
(tests/support/matrix.py: upload inspection, pipeline.run, the output verified in onnxruntime).

Cells that fail today are strict xfails naming the reason: when a fix lands, the xfail turns
into an XPASS failure, and the fix removes it from KNOWN.
"""

from __future__ import annotations

import pytest

from tests.support import corpus
from tests.support.matrix import run_cell

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

ENTRIES = ["legacy-ir3-init-inputs", "resnet-ts9", "resnet-dynamo18", "minilm-ts17"]
TECHNIQUES = ["benchmark", "quantize.dynamic", "quantize.static", "prune.structured"]
# (entry, technique) -> why it fails today (issue 13's work list)
# (entry, technique) -> reason, for cells expected to fail today (strict xfail). The legacy
# IR 3 cells left this list when old-ONNX normalisation landed (app/engine/runtime/normalize.py).
KNOWN: dict[tuple[str, str], str] = {}


@pytest.fixture(scope="module")
def entries() -> dict[str, corpus.Entry]:
    built = {e.name: e for e in corpus.build(ENTRIES)}
    refused = {n: e.error for n, e in built.items() if e.error}
    assert not refused, f"the corpus could not build {refused}"
    return built


@pytest.mark.parametrize("technique", TECHNIQUES)
@pytest.mark.parametrize("name", ENTRIES)
def test_cell(entries, name, technique, request):
    """(prune.structured on minilm-ts17 is the ONNX FFN route; on the CNNs, the torch route
    with the graph rewrites of app/engine/prune/canonical.py.)"""
    if (name, technique) in KNOWN:
        request.applymarker(pytest.mark.xfail(strict=True, reason=KNOWN[name, technique]))
    result = run_cell(entries[name], technique, timeout_s=120)
    assert result["status"] == "ok", f"{result['error_type']}: {result['reason']}"


def test_external_data_refused_at_upload(tmp_path):
    """The one legacy case that is not supported: the upload says how to re-save."""
    (entry,) = corpus.build(["legacy-external-data"])
    result = run_cell(entry, "benchmark")
    assert result["status"] == "ok", result
    assert "refused at upload as expected (422" in result["reason"]
