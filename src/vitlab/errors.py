"""Errors a user can cause. Each carries a one-line message that says what to do."""


class VitlabError(Exception):
    """Base class of every error the CLI reports without a traceback."""


class ConfigError(VitlabError):
    """An unknown key, an unknown preset, or a configuration that cannot be built."""


class DataError(VitlabError):
    """A data file that is missing, truncated, corrupt, or of the wrong format."""


class ImageError(VitlabError):
    """An image file that cannot be decoded."""


class CheckpointError(VitlabError):
    """A checkpoint that is missing, unreadable, or does not match its configuration."""
