"""Windows DPAPI through ctypes (`CryptProtectData` / `CryptUnprotectData`, crypt32.dll): no extra dependency.

Machine scope (`CRYPTPROTECT_LOCAL_MACHINE`): the service runs as LocalSystem (or its own account), not as the
administrator who pastes the token, so the blob must open for any account of this machine; the file's ACL
(created in the service's ProgramData folder, which only SYSTEM and Administrators may read) keeps other users
out. A blob copied to another machine does not open. `UI_FORBIDDEN`: a service has no desktop to ask on.
An application entropy ties the blobs to ksefd.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any

from ksefd.i18n import _

CRYPTPROTECT_UI_FORBIDDEN = 0x1
CRYPTPROTECT_LOCAL_MACHINE = 0x4
ENTROPY = b"ksefd credential v1"


class DpapiUnavailable(OSError):
    pass


class _Blob(ctypes.Structure):
    _fields_ = [("cbData", ctypes.c_uint32), ("pbData", ctypes.POINTER(ctypes.c_char))]


def _blob(data: bytes) -> tuple[_Blob, Any]:
    buffer = ctypes.create_string_buffer(data, len(data))
    return _Blob(len(data), ctypes.cast(buffer, ctypes.POINTER(ctypes.c_char))), buffer


def _crypt32() -> Any:
    if sys.platform != "win32":
        raise DpapiUnavailable(_("DPAPI exists only on Windows; on Linux use --store systemd or --store file"))
    return ctypes.windll.crypt32      # type: ignore[attr-defined,unused-ignore]


def _call(function: str, data: bytes) -> bytes:
    crypt32 = _crypt32()
    source, keep = _blob(data)
    entropy, keep_entropy = _blob(ENTROPY)
    result = _Blob()
    flags = CRYPTPROTECT_UI_FORBIDDEN | CRYPTPROTECT_LOCAL_MACHINE
    if function == "protect":
        ok = crypt32.CryptProtectData(ctypes.byref(source), "ksefd", ctypes.byref(entropy), None, None, flags,
                                      ctypes.byref(result))
    else:
        ok = crypt32.CryptUnprotectData(ctypes.byref(source), None, ctypes.byref(entropy), None, None, flags,
                                        ctypes.byref(result))
    del keep, keep_entropy
    if not ok:
        raise DpapiUnavailable(_("DPAPI {operation} failed (Windows error {code})", operation=function,
                                 code=ctypes.GetLastError()))  # type: ignore[attr-defined,unused-ignore]
    try:
        return ctypes.string_at(result.pbData, result.cbData)
    finally:
        ctypes.windll.kernel32.LocalFree(result.pbData)   # type: ignore[attr-defined,unused-ignore]


def protect(data: bytes) -> bytes:
    return _call("protect", data)


def unprotect(blob: bytes) -> bytes:
    return _call("unprotect", blob)
