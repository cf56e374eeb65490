"""crashd: an on-device crash-reporting daemon and library.

The library surface is small: :mod:`crashd.report` reads and writes the
problem-report format; :mod:`crashd.spool` handles the crash directory safely;
:mod:`crashd.uploader` speaks the daisy protocol.
"""

__version__ = "0.1.0"
