"""Errors with one clear line naming file, record and field, and posecal's warning class.

Conventions (as torchmetrics): :class:`PosecalInputError` for bad input *data* (a file, a record, a field);
plain ``ValueError`` / ``TypeError`` for misuse of the Python API (an unknown option, a wrong shape passed
by the caller); :class:`NotFittedError` for a learned estimator used before ``fit``.
"""

from __future__ import annotations

__all__ = ["NotFittedError", "PosecalInputError", "PosecalWarning"]


class PosecalInputError(ValueError):
    """Bad user input. ``str(err)`` is one line: ``FILE: record R: field F: message``.

    The CLI prints it and exits with code 2 without writing any output file.
    """

    def __init__(
        self, message: str, file: str | None = None, record: object = None, field: str | None = None
    ):
        self.file, self.record, self.field, self.message = file, record, field, message
        parts = []
        if file is not None:
            parts.append(str(file))
        if record is not None:
            parts.append(f"record {record}")
        if field is not None:
            parts.append(f"field {field!r}")
        parts.append(message)
        super().__init__(": ".join(parts))


class PosecalWarning(UserWarning):
    """Legal-but-suspicious input (e.g. keypoint scores above 1). Never silently corrected."""


class NotFittedError(PosecalInputError, AttributeError):
    """A learned estimator was used before :meth:`fit` (like ``sklearn.exceptions.NotFittedError``).

    A subclass of ``ValueError`` and ``AttributeError`` as scikit-learn's is, and of
    :class:`PosecalInputError` so that the CLI reports an unfitted calibrator as one line with exit code 2.
    """
