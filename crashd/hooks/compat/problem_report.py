"""The top-level ``problem_report`` module of apport 2.36, as far as hooks use it: the report mapping.

``ProblemReport`` is a ``UserDict`` with apport's key and value checks,
``add_tags``/``get_tags``/``get_timestamp``/``new_keys``; ``CompressedValue``
holds gzip-compressed bytes. Loading and writing report files is crashd's
business (``crashd.report``), not a hook's, and is not provided here.
"""

import collections
import locale
import time

__all__ = ["CompressedValue", "InvalidProblemReportKeyError", "MalformedProblemReport", "ProblemReport"]


class InvalidProblemReportKeyError(ValueError):
    """A key with characters other than letters, digits, ``.``, ``_`` and ``-``."""


class MalformedProblemReport(ValueError):
    """A report file that cannot be parsed."""

    def __init__(self, message, *args):
        super().__init__(f"Malformed problem report: {message}. Is this a proper .crash text file?", *args)


class CompressedValue:
    """A value stored gzip-compressed: ``get_value()`` gives the bytes back."""

    def __init__(self, value=None, name=None, compressed_value=None):
        self.name = name
        self.compressed_value = compressed_value
        if value is not None:
            self.set_value(value)

    def set_value(self, value):
        import gzip  # on first use: the hook child starts once per report

        self.compressed_value = gzip.compress(value)

    def get_value(self):
        import gzip

        return gzip.decompress(self.compressed_value) if self.compressed_value else None

    def get_compressed_size(self):
        return len(self.compressed_value or b"")

    def write(self, file):
        file.write(self.get_value() or b"")

    def __len__(self):
        return len(self.get_value() or b"")

    def splitlines(self):
        return (self.get_value() or b"").splitlines()


def _valid_key(key):
    return hasattr(key, "isalnum") and key.replace(".", "").replace("-", "").replace("_", "").isalnum()


class ProblemReport(collections.UserDict):
    """A problem report: str keys, str/bytes/``CompressedValue`` values."""

    def __init__(self, problem_type="Crash", date=None):
        super().__init__({"ProblemType": problem_type, "Date": date or time.asctime()})
        self.old_keys = set()

    def __setitem__(self, k, v):
        if not _valid_key(k):
            raise InvalidProblemReportKeyError(
                f"key '{k}' contains invalid characters"
                " (only numbers, letters, '.', '_', and '-' are allowed)"
            )
        file_reference = isinstance(v, tuple) and 1 <= len(v) <= 4 and hasattr(v[0], ("isalnum"))
        if not (isinstance(v, CompressedValue) or hasattr(v, "isalnum") or file_reference):
            raise TypeError(f"value for key {k} must be a string, CompressedValue, or a file reference")
        self.data[k] = v

    def add_tags(self, tags):
        self["Tags"] = " ".join(sorted(self.get_tags().union(tags)))

    def get_tags(self):
        return set(self["Tags"].split(" ")) if "Tags" in self else set()

    def get_timestamp(self):
        """``Date`` (asctime, C locale) as seconds since the epoch, or None."""
        saved = locale.getlocale(locale.LC_TIME)
        try:
            locale.setlocale(locale.LC_TIME, "C")
            try:
                return int(time.mktime(time.strptime(self["Date"])))
            except (KeyError, TypeError, ValueError, OverflowError):
                return None
            finally:
                locale.setlocale(locale.LC_TIME, saved)
        except locale.Error:
            return None

    @staticmethod
    def is_binary(string):
        return isinstance(string, bytes) and any(c < 32 and not chr(c).isspace() for c in string)

    def new_keys(self):
        return set(self.data.keys()) - self.old_keys
