"""Stand-in for kms++'s Python bindings (python3-kms++ on Raspberry Pi OS; neither in Debian nor a
PyPI wheel). picamera2 imports it at import time, for its DRM preview only; edged never starts a
preview. Any use beyond the import-time names raises. Test roots only (scripts/picamera2-root)."""


class _Names:
    def __getattr__(self, name: str) -> str:
        return name


PixelFormat = _Names()
PlaneType = _Names()


def __getattr__(name: str) -> object:
    if name.startswith("__"):
        raise AttributeError(name)
    raise RuntimeError(f"pykms stub: {name} is not available (no kms++ here)")
