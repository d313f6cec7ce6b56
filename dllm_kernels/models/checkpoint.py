"""The project's own checkpoint format: ``config.json`` (ModelConfig fields plus
``"model_type": "dllm_kernels"``) and ``model.safetensors`` with :class:`DiffusionLM`'s
parameter names. (The public LLaDA/Dream formats are read by :mod:`dllm_kernels.models.hf`.)"""

from __future__ import annotations

import contextlib
import json
import pathlib

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import ModelConfig
from .transformer import DiffusionLM

MODEL_TYPE = "dllm_kernels"


def save_checkpoint(model: DiffusionLM, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"model_type": MODEL_TYPE, **json.loads(model.config.to_json())}
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@contextlib.contextmanager
def open_safetensors(file, device="cpu"):
    """``safetensors.safe_open`` whose errors (a corrupt or truncated file) name the file."""
    try:
        with safe_open(str(file), framework="pt", device=str(device)) as f:
            yield f
    except SafetensorError as e:
        raise ValueError(f"{file}: not a readable safetensors file ({e})") from None


def load_checkpoint(path, *, device="cpu", dtype=torch.float32, backend="auto", attn_impl="ops") -> DiffusionLM:
    path = pathlib.Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no config.json (not a checkpoint directory?)") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path / 'config.json'}: not valid JSON ({e})") from None
    if config.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{path}: not a {MODEL_TYPE} checkpoint (model_type {config.get('model_type')!r})")
    model = DiffusionLM(ModelConfig.from_dict(config), backend=backend, attn_impl=attn_impl)
    with open_safetensors(path / "model.safetensors") as f:
        state = {name: f.get_tensor(name) for name in f.keys()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (model.config.tie_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the config: missing {missing}, unexpected {unexpected}")
    return model.to(device=device, dtype=dtype).eval()


def _read_json(file: pathlib.Path) -> dict:
    if not file.is_file():
        raise FileNotFoundError(f"{file.parent}: no {file.name} (not a checkpoint directory?)")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
