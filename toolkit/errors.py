"""Exceptions whose message a user can act on; the CLI prints them as one line."""


class TkError(Exception):
    """An error the user can fix; the message names the file or setting and the fix."""

    exit_code = 1


class PluginError(TkError):
    """A plugin could not be loaded or registered something invalid."""


class StoreBusy(TkError):
    """Another process holds the DuckDB store."""

    exit_code = 4
