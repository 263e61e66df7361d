"""Shared checked readers for image sources: RGB images, label masks, and skip-bad bookkeeping.

Every reader here raises `paths.DataError` naming the file; none guesses silently (a grayscale
or RGBA file where RGB is expected is an error, not a conversion; so is a 16-bit RGB file, which
PIL would silently cut to its high byte). Listings skip hidden files (`.DS_Store`, macOS `._*`)."""
import pathlib
import struct
import warnings

import numpy as np
from PIL import Image

from histojax.data import paths

IMAGE_EXTS = ('.png', '.bmp', '.tif', '.tiff', '.jpg', '.jpeg')
_GRAY_MODES = ('1', 'L', 'P', 'I', 'I;16', 'I;16B', 'I;16L', 'I;16N')
# Modes holding at most 8 bits per sample: a file with deeper samples opened in one of these
# has lost its low bits (PIL opens a 16-bit RGB PNG or TIFF as 'RGB', keeping the high byte).
_8BIT_MODES = ('1', 'L', 'LA', 'La', 'P', 'PA', 'RGB', 'RGBA', 'RGBa', 'RGBX', 'CMYK', 'YCbCr',
               'LAB', 'HSV')
# Pillow raises these, beside OSError, for some malformed headers and pixel data.
_READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, struct.error,
                Image.DecompressionBombError)


class RecordList(list):
  """A plain list of records that also carries what was skipped and notes for reports."""

  def __init__(self, items=(), skipped=(), notes=()):
    super().__init__(items)
    self.skipped = list(skipped)  # one DataError message per skipped item
    self.notes = list(notes)


class BadItems:
  """Runs per-item loaders: re-raises DataError, or with skip_bad=True records it and goes on."""

  def __init__(self, skip_bad: bool, what: str):
    self.skip_bad, self.what, self.messages = skip_bad, what, []

  def run(self, fn, *args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except paths.DataError as e:
      if not self.skip_bad:
        raise
      self.messages.append(str(e))
      return None

  def finish(self, items, notes=()) -> RecordList:
    if self.messages:
      # One warning for the batch, so a long run of bad files does not flood the log.
      warnings.warn(f'{self.what}: skipped {len(self.messages)} bad item(s) (skip_bad=True); '
                    f'first: {self.messages[0]}', stacklevel=3)
    return RecordList(items, self.messages, notes)


def find_file(folder: pathlib.Path, stem: str, exts=IMAGE_EXTS):
  """Returns folder/<stem><ext> for the first ext that exists (case-insensitive ext), else None."""
  for ext in exts:
    for e in (ext, ext.upper()):
      if (folder / (stem + e)).is_file():
        return folder / (stem + e)
  return None


def visible(path: pathlib.Path) -> bool:
  """False for hidden names: macOS copies leave `.DS_Store` and `._<name>` (resource forks that
  carry an image extension but are not images) in every folder they touch."""
  return not path.name.startswith('.')


def list_images(folder: pathlib.Path) -> list[pathlib.Path]:
  """Image files directly in `folder` (hidden files skipped), sorted by name (deterministic
  across file systems)."""
  return sorted(p for p in folder.iterdir()
                if visible(p) and p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def bit_depth(path: pathlib.Path, im: Image.Image) -> int:
  """Bits per sample stored in the file (not in PIL's mode): PNG IHDR byte, TIFF
  BitsPerSample; 8 for other formats (PIL reads none of them deeper than it reports)."""
  if im.format == 'PNG':
    with open(path, 'rb') as f:
      head = f.read(26)  # signature (8), IHDR length + type (8), width, height, bit depth
    if len(head) == 26 and head[12:16] == b'IHDR':
      return head[24]
  elif im.format == 'TIFF':
    bits = im.tag_v2.get(258, 8)
    return max(bits) if isinstance(bits, tuple) and bits else int(bits)
  return 8


def _check_depth(path: pathlib.Path, im: Image.Image):
  depth = bit_depth(path, im)
  if depth > 8 and im.mode in _8BIT_MODES:
    raise paths.DataError(
        f'Image {path} has {depth} bits per channel, but is read as 8-bit mode {im.mode!r}, '
        'keeping only the high byte (a 12-bit scan would look almost black). Convert it to '
        '8-bit first, scaling by its real bit depth (e.g. value * 255 / 4095 for 12-bit data, '
        '/ 65535 for full 16-bit).')


def _open(path: pathlib.Path) -> Image.Image:
  try:
    im = Image.open(path)
  except _READ_ERRORS as e:
    raise paths.DataError(f'Cannot read image {path}: {e} (not an image, or corrupt?)') from e
  try:
    _check_depth(path, im)
  except paths.DataError:
    im.close()
    raise
  return im


def image_header(path: pathlib.Path) -> tuple[tuple[int, int], str]:
  """Returns ((height, width), PIL mode) from the header only (cheap; pixels are not decoded).
  A file deeper than 8 bits that PIL would read as an 8-bit mode is a DataError."""
  with _open(path) as im:
    return (im.height, im.width), im.mode


def check_rgb_mode(path, mode: str):
  if mode != 'RGB':
    kind = 'grayscale' if mode in _GRAY_MODES else mode
    raise paths.DataError(f'Image {path} is {kind} (PIL mode {mode!r}); an RGB image is expected. '
                          'Convert it to 8-bit RGB (e.g. drop the alpha channel) before use.')


def _decode(path: pathlib.Path) -> tuple[np.ndarray, str]:
  with _open(path) as im:
    try:
      im.load()  # decodes now, so truncation surfaces here with the file name
    except _READ_ERRORS as e:
      raise paths.DataError(f'Cannot decode image {path}: {e} (truncated or corrupt?)') from e
    return np.asarray(im), im.mode


def read_rgb(path) -> np.ndarray:
  """Reads an 8-bit RGB image as uint8 [H, W, 3]; anything else is a DataError."""
  path = pathlib.Path(path)
  array, mode = _decode(path)
  check_rgb_mode(path, mode)
  return np.ascontiguousarray(array, dtype=np.uint8)


def check_gray_mode(path, mode: str):
  if mode != 'L':
    deep = (' It holds more than 8 bits per pixel: convert it to 8-bit first, scaling by its '
            'real bit depth (e.g. value * 255 / 4095 for 12-bit data).'
            if mode.startswith('I') or mode == 'F' else '')
    raise paths.DataError(f'Image {path} has PIL mode {mode!r}; an 8-bit grayscale image (mode '
                          f"'L') is expected with data.channels=1.{deep}")


def read_gray(path) -> np.ndarray:
  """Reads an 8-bit grayscale image as uint8 [H, W, 1]; anything else is a DataError."""
  path = pathlib.Path(path)
  array, mode = _decode(path)
  check_gray_mode(path, mode)
  return np.ascontiguousarray(array, dtype=np.uint8)[..., None]


def read_label_mask(path, binary_to_01: bool = True) -> np.ndarray:
  """Reads a label mask as int32 [H, W].

  Palette PNGs give their palette indices; gray (or gray stored as RGB) gives pixel values; a
  mask with only values {0, 255} becomes {0, 1} when binary_to_01. Colour RGB or alpha masks
  are refused: their colour-to-class mapping is not knowable here.
  """
  path = pathlib.Path(path)
  array, mode = _decode(path)
  if mode == 'RGB':
    if not (np.array_equal(array[..., 0], array[..., 1]) and
            np.array_equal(array[..., 0], array[..., 2])):
      raise paths.DataError(f'Mask {path} is a colour RGB image; save masks as gray label values '
                            'or as a palette PNG so each pixel holds a class/instance index.')
    array = array[..., 0]
  elif mode not in _GRAY_MODES:
    raise paths.DataError(f'Mask {path} has PIL mode {mode!r}; expected a single-channel label '
                          'mask (gray, 16-bit gray, or palette).')
  mask = array.astype(np.int32)
  if binary_to_01 and mode != 'P' and mask.max(initial=0) == 255 and \
     np.all((mask == 0) | (mask == 255)):
    mask = (mask == 255).astype(np.int32)
  return mask


def check_same_size(image_path, mask_path, image_hw, mask_hw):
  if tuple(image_hw) != tuple(mask_hw):
    raise paths.DataError(f'Mask {mask_path} is {mask_hw[1]}x{mask_hw[0]} but its image '
                          f'{image_path} is {image_hw[1]}x{image_hw[0]} (width x height): '
                          'they cannot be a pair.')
