"""The one exception the CLI turns into a one-line message and a non-zero exit."""


class LandscapeError(Exception):
    """A user-facing problem (bad file, bad option): the message is shown as is, on one line."""
