"""The root of every exception crashd raises: ``except CrashdError`` catches crashd's own refusals.

Each class lives in the module whose job it names (a report's errors in :mod:`crashd.report`, the
network's in :mod:`crashd.uploader`); this module holds only the root, so that the standard-library-only
modules (the capture path, the file layer) can import it for nothing. Classes that callers also catch
as a built-in (``ValueError``, ``PermissionError``, ``ConnectionError``, …) keep that base too. The tree
(``tests/test_errors.py`` checks that every class defined in ``crashd`` is in it)::

    CrashdError
    ├── ReportError (ValueError)              crashd.report: a report crashd refuses
    │   ├── MalformedReportError             the bytes break the format
    │   └── ReportLimitError                 larger than a configured bound
    ├── CodecError (ValueError)              crashd._codec: a compressed value that does not decode
    ├── UnsafeFileError (ValueError)         crashd.fs: a file that breaks a safety rule
    ├── ConfigError (ValueError)             crashd.config: a setting crashd cannot use
    ├── ConsentLocked (PermissionError)      crashd.consent: the administrator locked the preferences
    ├── BusUnavailable (ConnectionError)     crashd.dbus.bus: the system bus cannot be used
    ├── NotAuthorized (PermissionError)      crashd.dbus_client: polkit or a lock said no
    ├── UploadError                          crashd.uploader: not delivered this time; try later
    │   ├── ConnectError                     refused, TLS, proxy, bad URL
    │   │   └── OfflineError                 this device has no network
    │   ├── UploadTimeout                    no connection or no answer in time
    │   ├── ExchangeError                    the exchange broke, or the answer was unusable
    │   └── WorkerError                      the upload worker died, hung or said something malformed
    ├── CoreUnavailable                      crashd.uploader: the report cannot send the core asked for
    ├── HookSetupError (RuntimeError)        crashd.hooks.accounts: hooks cannot run for this report
    ├── InvalidFieldError (ValueError)       crashd.hooks.discovery: a field that could choose no hooks
    │   └── InvalidPackageError              Package or SourcePackage names no plain package
    ├── InvalidEntry (ValueError)            crashd.capture.journal: not a usable coredump entry
    │   └── NoEntry                          no entry for the instance (yet)
    ├── UsageError                           crashd.cli._common: what the user asked for is wrong (exit 2)
    └── NotAllowed                           crashd.cli._common: understood but refused (exit 5)

Private classes (a worker's ``_OutOfTime``, the hook runner's ``_ProtocolError``) hang under the
class they stand for. Not in the tree, on purpose: ``crashd/hooks/child.py``, ``hook_api.py`` and
``crashd/hooks/compat/`` run inside the hook child without importing ``crashd`` (the compat classes
are apport's own API, with apport's bases), and :mod:`crashd.process`, which the child loads by path,
keeps its ``PrivilegeError`` a plain ``RuntimeError``.
"""

__all__ = ["CrashdError"]


class CrashdError(Exception):
    """Something crashd refuses or could not do; the message is a sentence for a log or a user."""
