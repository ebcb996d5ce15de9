"""The one error type services raise for a refused participant action."""


class StudyActionError(Exception):
    """A refused action: `code` is stable for clients and tests, `message` is participant-safe."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
