"""Re-export: the configuration lives in ``core.config`` (the bottom layer, importable by catalog/ and pipelines/)."""

from core.config import (
    CONFIG_FILE_ENV,
    DEFAULT_CONFIG_FILE,
    ENV_VARS,
    TOML_KEYS,
    LakeConfig,
    data_dir,
    load_config,
    publish,
)

__all__ = [
    "CONFIG_FILE_ENV",
    "DEFAULT_CONFIG_FILE",
    "ENV_VARS",
    "TOML_KEYS",
    "LakeConfig",
    "data_dir",
    "load_config",
    "publish",
]
