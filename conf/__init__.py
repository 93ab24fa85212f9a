"""Configuration: the Settings object and deployment files."""

from conf.settings import MailSettings, Settings, SettingsError, load, load_resolved, to_env

__all__ = ["MailSettings", "Settings", "SettingsError", "load", "load_resolved", "to_env"]
