"""Reading image files safely.

:func:`open_image` returns a fully decoded PIL image or raises :class:`ImageError` with a
message that names the file: unreadable, not an image, truncated, or too large (a
"decompression bomb": a small file that would decode to billions of pixels).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import IO, Any

#: Default pixel limit, the same as Pillow's own decompression-bomb threshold (~89.5 Mpx).
DEFAULT_MAX_PIXELS = 89_478_485


class ImageError(ValueError):
    """An image file could not be used: missing, not an image, truncated or too large."""


def open_image(
    source: str | Path | bytes | IO[bytes],
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    exif_transpose: bool = False,
) -> Any:
    """Open and fully decode an image file; returns a ``PIL.Image.Image`` (mode unchanged).

    ``max_pixels``: refuse images with more pixels than this before decoding them
    (``None``: no limit beyond Pillow's own).  Multi-frame files (GIF, TIFF...) give their
    first frame.  ``exif_transpose`` applies the EXIF orientation; it is off by default because
    AnyGPT's SEED preprocessing never applied it.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    name = _describe(source)
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    elif isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            raise ImageError(f"'{path}' is a folder, not an image file")
        if not path.is_file():
            raise ImageError(f"image file not found: '{path}'")
        if not os.access(path, os.R_OK):
            raise ImageError(f"cannot read image file '{path}': permission denied")
    try:
        with warnings.catch_warnings():
            # We apply our own limit below; Pillow's warning would only duplicate it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                width, height = img.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageError(
                        f"{name} is {width}x{height} = {width * height} pixels, more than the "
                        f"limit of {max_pixels}; refusing to decode it (possible decompression "
                        "bomb). Pass a larger max_pixels if the file is trusted."
                    )
                img.seek(0)
                img.load()
                out = img.copy()
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} is too large to decode safely: {exc}") from exc
    except PermissionError as exc:
        raise ImageError(f"cannot read {name}: permission denied") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{name} is not a recognised image file") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        # Pillow reports truncated or corrupt data as OSError (and a few decoders as
        # SyntaxError/ValueError/EOFError).
        raise ImageError(f"{name} could not be decoded (truncated or corrupt): {exc}") from exc
    if exif_transpose:
        out = ImageOps.exif_transpose(out)
    return out


def _describe(source: object) -> str:
    if isinstance(source, (str, Path)):
        return f"image '{source}'"
    if isinstance(source, bytes):
        return f"image data ({len(source)} bytes)"
    name = getattr(source, "name", None)
    return f"image '{name}'" if isinstance(name, str) else "image stream"
