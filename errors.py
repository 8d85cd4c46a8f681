"""The project's own exception for a bad run configuration."""


class ConfigError(ValueError):
    """A bad config field; the message names the field, the value and what is allowed.

    Raised before anything is compiled or initialised (`training.run_config.RunConfig.
    from_configdict`, `training.checkpointing.validate_workdir`). A ValueError, so callers that
    catch ValueError keep working.
    """
