"""Model loading never unpickles: checkpoints are read with safetensors only, and no loader in the code can reach
pickle (``torch.load`` only with ``weights_only=True``, ``from_pretrained`` only with ``use_safetensors=True``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from conftest import REPO
from training.checkpoint import load_pretrained, load_reward_model, read_safetensors_state, save_pretrained
from training.model import LlamaModel, ModelConfig, RewardModel

PACKAGES = ["catalog", "core", "lake", "operators", "pipelines", "training"]
PICKLERS = {"pickle", "cloudpickle", "dill", "joblib", "_pickle"}
# the one unpickling in the code: DataFile descriptions a Ray write task of the same run hands its driver
# (Ray itself moves task results with pickle), never a file or anything a user supplies
ALLOWED = {("catalog/datafiles.py", "pickle.loads")}


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords)


def unsafe_loads(path: Path, root: Path = REPO) -> list[tuple[str, int, str]]:
    """(file, line, callee) of the calls in one source file that could unpickle what they load."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        module, _, attr = name.rpartition(".")
        bad = (
            (name == "torch.load" and not _keyword_is(node, "weights_only", True))
            or (attr == "from_pretrained" and not _keyword_is(node, "use_safetensors", True))
            or (module in PICKLERS and attr in {"load", "loads", "Unpickler"})
            or name in {"torch.jit.load", "yaml.unsafe_load", "marshal.loads"}
            or (name == "yaml.load" and not any(k.arg == "Loader" for k in node.keywords))
            or (name in {"np.load", "numpy.load"} and _keyword_is(node, "allow_pickle", True))
        )
        if bad:
            found.append((str(path.relative_to(root)), node.lineno, name))
    return found


def test_no_loader_in_the_code_can_unpickle():
    files = [p for package in PACKAGES for p in sorted((REPO / package).rglob("*.py"))]
    assert len(files) > 50, files
    found = [hit for path in files for hit in unsafe_loads(path)]
    assert [(file, line, name) for file, line, name in found if (file, name) not in ALLOWED] == []


def test_the_scan_sees_unsafe_calls(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import pickle, torch, numpy as np\n"
        "torch.load('x')\ntorch.load('x', weights_only=True)\nAutoModel.from_pretrained('d')\n"
        "AutoModel.from_pretrained('d', use_safetensors=True)\npickle.load(f)\nnp.load('a', allow_pickle=True)\n"
    )
    hits = [name for _, _, name in unsafe_loads(probe, root=tmp_path)]
    assert hits == ["torch.load", "AutoModel.from_pretrained", "pickle.load", "np.load"]


class _Payload:
    """Unpickling this touches a marker file: what a hostile pytorch_model.bin could do instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize(
    "model, loader",
    [(LlamaModel, load_pretrained), (LlamaModel, read_safetensors_state), (RewardModel, load_reward_model)],
    ids=["lm", "state", "reward-model"],
)
def test_a_pickled_checkpoint_is_refused_without_running_it(tmp_path, model, loader):
    cfg = ModelConfig(vocab_size=64, dim=32, n_layers=1, n_heads=2, n_kv_heads=1, multiple_of=16, max_seq_len=16)
    folder = tmp_path / "ckpt"
    built = RewardModel(cfg, pad_id=0, seed=0) if model is RewardModel else LlamaModel(cfg, seed=0)
    save_pretrained(built, cfg, folder)
    state = read_safetensors_state(folder)
    (folder / "model.safetensors").unlink()  # only the pickled weights remain, as in an old transformers folder
    marker = tmp_path / "unpickled"
    torch.save({**state, "payload": _Payload(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        loader(folder)
    assert not marker.exists(), "the pickled checkpoint was unpickled"
    with pytest.raises(Exception, match="Weights only load failed"):  # torch's own safe load refuses it too
        torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.load(folder / "pytorch_model.bin", weights_only=False)  # the payload is live: an unsafe load runs it
    assert marker.exists()
