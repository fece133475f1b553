"""The expected failures: bad settings, bad or missing inputs, a run directory that is taken.

Raised anywhere (this module imports nothing from adl_jax, so every layer may use it); `adl`'s `main()`
prints one of them as a single line naming the problem and the fix, and exits 2. Each is also the
builtin its callers already catch (ValueError, ImportError), so library users see no new types to handle.
"""

from __future__ import annotations


class AdlError(Exception):
    """An expected failure whose message says what is wrong and how to fix it."""


class UsageError(AdlError, ValueError):
    """A setting or flag has a value the run cannot use (a size below 1, a learning rate <= 0, ...)."""


class InputError(AdlError, ValueError):
    """An input file is missing, unreadable, malformed or corrupt; the message names the file."""


class RunDirError(AdlError, ValueError):
    """The run directory holds another run, or another process is working in it."""


class MissingExtra(AdlError, ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


def require(ok: bool, name: str, value, rule: str) -> None:
    """Refuse the setting `name` (a field; its flag is --name with dashes) unless `ok`, saying the `rule`."""
    if not ok:
        raise UsageError(f"--{name.replace('_', '-')} {value}: {rule}")
