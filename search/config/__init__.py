"""The search configuration: one YAML file validated into typed objects (``schema``),
its sections (``space``, ``sections``), where its files go (``paths``) and the bounded
reading of the file (``file``). The names below are the ones the rest of the product uses."""

from search.config.file import ConfigError, read_config_file
from search.config.paths import STORE_FILE, inside_folder, local_store, local_store_uri
from search.config.schema import SearchConfig, format_validation_error, load_config, merge_sections, parse_config
from search.config.sections import ActorsConfig, BaseTrainingConfig, BudgetConfig, ObjectiveConfig, RecordsConfig, SamplerConfig
from search.config.space import ReconSpace, SpaceConfig

__all__ = [
    "STORE_FILE",
    "ActorsConfig",
    "BaseTrainingConfig",
    "BudgetConfig",
    "ConfigError",
    "ObjectiveConfig",
    "RecordsConfig",
    "ReconSpace",
    "SamplerConfig",
    "SearchConfig",
    "SpaceConfig",
    "format_validation_error",
    "inside_folder",
    "load_config",
    "local_store",
    "local_store_uri",
    "merge_sections",
    "parse_config",
    "read_config_file",
]
