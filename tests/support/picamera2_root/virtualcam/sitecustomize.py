"""The smallest adaptations libcamera's *virtual* camera needs from the real picamera2, applied
when ``picamera2`` is imported in the test root (scripts/picamera2-root), so that an unmodified
edged (``import picamera2``) runs against the real library. Everything else is the real thing.

- ``Picamera2._get_raw_modes``: picamera2 always probes ``StreamRole.Raw`` when it opens a camera;
  the virtual pipeline refuses that role (``generate_configuration`` returns None). The
  VideoRecording role's formats are listed instead, as a camera without a raw sensor mode would.
- The allocator: picamera2's default DmaAllocator hands libcamera single-plane buffers, while the
  virtual pipeline writes NV12 into two planes; libcamera's own FrameBufferAllocator is used.

Controls are left alone: the virtual camera advertises none, and edged itself must cope with a
camera that does not advertise ``FrameDurationLimits``. Off when ``EDGED_VIRTUALCAM=0`` (the tests
that show what unmodified picamera2 does on this camera).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from typing import Any


def adapt(module: Any) -> None:
    import libcamera
    from picamera2.allocators import Allocator, LibcameraAllocator

    cls = module.Picamera2
    real_init = cls.__init__

    def __init__(self, camera_num=0, verbose_console=None, tuning=None, allocator=None):  # noqa: N807
        real_init(self, camera_num, verbose_console, tuning, allocator if allocator is not None else Allocator())
        if allocator is None:
            self.allocator = LibcameraAllocator(self.camera)

    def _get_raw_modes(self):
        config = self.camera.generate_configuration([libcamera.StreamRole.VideoRecording])
        formats = config.at(0).formats
        return [
            {"format": str(pix), "size": (s.width, s.height)}
            for pix in formats.pixel_formats
            for s in formats.sizes(pix)
        ]

    cls.__init__ = __init__
    cls._get_raw_modes = _get_raw_modes
    module.VIRTUALCAM_ADAPTED = True


class _AdaptAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "picamera2":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        real_exec = spec.loader.exec_module

        def exec_module(module):
            real_exec(module)
            adapt(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get("EDGED_VIRTUALCAM", "1") != "0":
    sys.meta_path.insert(0, _AdaptAfterImport())
