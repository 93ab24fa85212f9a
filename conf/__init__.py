"""Configuration: the Settings object and deployment files."""

from conf.settings import Settings, SettingsError, load, load_resolved, to_env

__all__ = ["Settings", "SettingsError", "load", "load_resolved", "to_env"]
