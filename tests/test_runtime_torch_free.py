"""The runtime layer imports neither PyTorch, torchaudio nor Apache Beam, and layers import only downward.

A subprocess in which importing ``torch``, ``torchaudio`` or ``apache_beam`` raises streams exported ONNX models
(features graph and ``--raw-audio`` graph) over an 8 kHz WAV through the public API and through
``rnnstream stream``, and must give the answers the full install gives.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import rnnstream
from rnnstream.models.rnn import rnn_classifier
from rnnstream.pipeline.config import FeatureConfig

REPO = Path(__file__).resolve().parent.parent
BLOCKED = ("torch", "torchaudio", "apache_beam")

BLOCKER = textwrap.dedent(f"""
    import importlib.abc, sys
    class _Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ImportError("blocked in this test: " + name)
    sys.meta_path.insert(0, _Blocked())
""")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, str]:
    from rnnstream.export.onnx_export import export_onnx

    torch.manual_seed(0)
    fc = FeatureConfig.audio_default(sample_rate=16000, n_mels=12)
    model = rnn_classifier(input_dim=fc.dim, num_classes=4, hidden_size=16, num_layers=1).eval()
    root = tmp_path_factory.mktemp("torchfree")
    wav = root / "clip8k.wav"
    rng = np.random.default_rng(0)
    t = np.arange(9000) / 8000
    sf.write(str(wav), (0.3 * np.sin(2 * np.pi * 300 * t) + rng.normal(0, 0.05, t.size)).astype(np.float32), 8000,
             subtype="PCM_16")
    labels = ["zero", "one", "two", "three"]
    return {"features": export_onnx(model, root / "f.onnx", fc, labels),
            "raw": export_onnx(model, root / "r.onnx", fc, labels, raw_audio=True), "wav": str(wav)}


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=180)


@pytest.mark.parametrize("graph", ["features", "raw"])
def test_streams_an_onnx_model_without_torch_or_beam(exported, graph, tmp_path):
    model = rnnstream.load(exported[graph], provider="cpu")
    x, rate = sf.read(exported["wav"], dtype="float32")
    stream = model.stream(sample_rate=rate)
    for part in np.array_split(x, 7):
        stream.push(part)
    want = stream.prediction
    code = f"""
        import json, sys
        import numpy as np, soundfile as sf
        import rnnstream
        from rnnstream import cli
        model = rnnstream.load({exported[graph]!r}, provider="cpu")
        x, rate = sf.read({exported['wav']!r}, dtype="float32")
        stream = model.stream(sample_rate=rate)
        for part in np.array_split(x, 5):
            stream.push(part)
        print(json.dumps({{"label": stream.prediction.label, "scores": stream.prediction.scores}}))
        assert cli.main(["stream", "--model", {exported[graph]!r}, "--input", {exported['wav']!r}, "--final-only"]) == 0
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {BLOCKED!r})
        print(json.dumps({{"heavy": heavy}}))
    """
    proc = _run(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    api, final, heavy = (json.loads(line) for line in proc.stdout.strip().splitlines())
    assert heavy == {"heavy": []}
    for got in (api, final):
        assert got["label" if "label" in got else "predicted"] == want.label
        assert list(got["scores"]) == list(want.scores)
        np.testing.assert_allclose(list(got["scores"].values()), list(want.scores.values()), rtol=0, atol=1e-5)


def test_checkpoint_without_torch_names_the_extra(tmp_path):
    proc = _run("""
        import rnnstream
        try:
            rnnstream.load("model.pt")
        except rnnstream.RnnstreamError as exc:
            print(exc)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'rnnstream[train]'" in proc.stdout


# Layers import only downward: runtime (pipeline, the root package's light modules) < models/export < adapters.
LAYER_OF = {"pipeline": 1, "models": 2, "export": 2, "beam_jobs": 3, "serving": 3}
ADAPTERS_IN_ROOT = {"api", "cli", "_cli_support", "demo", "demo_cli", "datasets", "__main__"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] in ("torch", "torchaudio", "onnx"):
        return 2
    if parts[0] == "apache_beam":
        return 3
    if parts[0] != "rnnstream" or len(parts) == 1:
        return None
    if parts[1] in LAYER_OF:
        return LAYER_OF[parts[1]]
    return 3 if parts[1] in ADAPTERS_IN_ROOT else None


def test_layers_import_only_downward():
    bad = []
    for folder, layer in LAYER_OF.items():
        for path in sorted((REPO / folder).glob("*.py")):
            own = 3 if path.stem.endswith("cli") else layer  # command modules (cli, train_cli, ...) are adapters
            for lineno, module in _imports(path):
                above = _layer(module)
                if above is not None and above > own:
                    bad.append(f"{folder}/{path.name}:{lineno} imports {module} (layer {above} > {own})")
    assert not bad, "\n".join(bad)
