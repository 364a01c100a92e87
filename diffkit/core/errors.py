"""Exceptions raised by diffkit; each carries a one-line, user-facing message.

The CLI turns `UsageError` subclasses into exit code 2 and `SamplingError` into exit
code 1, printing only the message.
"""

from __future__ import annotations


class DiffkitError(Exception):
    """Base class of every error diffkit raises on purpose."""


class UsageError(DiffkitError, ValueError):
    """The user asked for something impossible: bad name, option, value or composition."""


class UnknownComponentError(UsageError, KeyError):
    """A component name is not registered (message names the kind and close matches)."""

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0]) if self.args else ""


class OptionError(UsageError):
    """An option key is unknown or its value has the wrong type or range."""


class CompositionError(UsageError):
    """Two components cannot work together (message names both)."""


class DuplicateComponentError(DiffkitError):
    """Two plugins registered the same component name (message names both plugins)."""


class SamplingError(DiffkitError, RuntimeError):
    """Sampling failed numerically, e.g. NaN or Inf appeared at some step."""


class PluginError(SamplingError):
    """A plugin's component broke its contract during work (e.g. a wrong sampler result); names the plugin."""


class OutputError(SamplingError):
    """Writing an output failed during work (e.g. a full disk); no new output was published."""


class PluginLoadWarning(UserWarning):
    """A plugin failed to import or register; the remaining plugins keep working."""


class UnknownHookError(DiffkitError):
    """A built-in plugin implements a hook diffkit does not specify, e.g. a misspelled one (a bug)."""
