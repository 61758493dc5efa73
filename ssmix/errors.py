"""The error type of bad configuration, in a leaf module that every config reader can import."""


class ConfigError(ValueError):
    """A problem in a config file or override; the message names the key and the fix."""
