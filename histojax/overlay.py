"""One overlay style for every picture of a label map (predict, report panels, TensorBoard,
`histojax.data.show`): the contours of each class, in a fixed colour-blind-safe palette
(Okabe-Ito, histojax/export.py `class_colours`; class i always has colour i), drawn over the
untinted image, so the morphology under a prediction stays visible; an optional light fill;
a legend naming every class and a title (the image name, and the per-image Dice where the
truth is known).
"""
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from histojax import export


def contour_thickness(shape):
  """Contour width in px: 1 for patches, 2 for GlaS-sized images, more for big tiles."""
  return max(1, round(min(shape[:2]) / 300))


def contours(image, labels, num_classes, *, fill=0.0, thickness=None):
  """uint8 [H, W, 3]: `image` with the inner boundary of each class region (labels > 0)
  drawn `thickness` px wide in the class colour, and the regions tinted by `fill` (0: none)."""
  image = np.asarray(image)
  if image.ndim == 2 or image.shape[-1] == 1:
    image = np.repeat(image.reshape(image.shape[:2])[..., None], 3, -1)
  labels = np.asarray(labels)
  if labels.shape != image.shape[:2]:
    raise ValueError(f'labels {labels.shape} and image {image.shape[:2]} differ in size.')
  out = image.astype(np.float32)
  colours = np.asarray(export.class_colours(num_classes), np.float32)
  t = thickness or contour_thickness(labels.shape)
  for c in range(1, num_classes):
    region = labels == c
    if not region.any():
      continue
    if fill:
      out[region] = (1 - fill) * out[region] + fill * colours[c]
    # border_value=0: an object cut by the image border is closed along it.
    edge = region & ~ndimage.binary_erosion(region, iterations=t, border_value=0)
    out[edge] = colours[c]
  return out.astype(np.uint8)


def font(size):
  return ImageFont.load_default(size=size)


def _band_height(width):
  return int(np.clip(width / 28, 16, 40))


def legend_band(class_names, width, skip_background=True):
  """uint8 [rows * h, width, 3], white: a colour swatch and the name of every class, wrapped
  onto more rows when the image is too narrow for one."""
  h = _band_height(width)
  f, pad = font(int(h * 0.6)), int(h * 0.2)
  colours = export.class_colours(len(class_names))
  measure = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  items, x, row = [], int(h * 0.3), 0
  for i, name in enumerate(class_names):
    if skip_background and i == 0:
      continue
    size = h - pad + int(measure.textlength(str(name), font=f))
    if items and x + size > width:  # wrap: the next row
      x, row = int(h * 0.3), row + 1
    items.append((x, row, i, str(name)))
    x += size + h
  band = Image.new('RGB', (width, h * (row + 1)), 'white')
  draw = ImageDraw.Draw(band)
  for x, r, i, name in items:
    y = r * h
    draw.rectangle([x, y + pad, x + h - 2 * pad, y + h - pad], fill=tuple(colours[i]),
                   outline='black')
    draw.text((x + h - pad, y + h / 2), name, fill='black', font=f, anchor='lm')
  return np.asarray(band)


def title_band(text, width):
  """uint8 [h, width, 3], white, with `text` left-aligned (cut to the width)."""
  h = _band_height(width)
  band = Image.new('RGB', (width, h), 'white')
  draw, f = ImageDraw.Draw(band), font(int(h * 0.6))
  while len(text) > 1 and draw.textlength(text, font=f) > width - h * 0.6:
    text = text[:-2] + '…'
  draw.text((int(h * 0.3), h / 2), text, fill='black', font=f, anchor='lm')
  return np.asarray(band)


def figure(image, labels, class_names, *, title='', fill=0.0):
  """The overlay as a stand-alone picture: title band, contours, legend band (uint8 RGB)."""
  drawn = contours(image, labels, len(class_names), fill=fill)
  width = drawn.shape[1]
  parts = ([title_band(title, width)] if title else []) + [drawn,
                                                           legend_band(class_names, width)]
  return np.concatenate(parts, axis=0)


def dice(pred, true, num_classes, ignore=None):
  """Per-image foreground Dice: 2|P∩T| / (|P| + |T|) per foreground class, averaged over the
  classes present in the truth or the prediction (1.0 when both are empty). `true` < 0 (the
  ignore value) is skipped."""
  pred, true = np.asarray(pred), np.asarray(true)
  valid = true >= 0 if ignore is None else ignore
  scores = []
  for c in range(1, num_classes):
    p, t = (pred == c) & valid, (true == c) & valid
    total = p.sum() + t.sum()
    if total:
      scores.append(2.0 * (p & t).sum() / total)
  return float(np.mean(scores)) if scores else 1.0
