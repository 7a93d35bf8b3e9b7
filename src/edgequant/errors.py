"""The one exception type the CLI turns into a single clear line on stderr."""


class EdgequantError(Exception):
    """A user-facing failure: the message names the file and the problem, in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # force one line
