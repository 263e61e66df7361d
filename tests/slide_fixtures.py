"""Real-tissue test slides: GlaS images tiled onto a white canvas, written with tifffile as
tiled, compressed (pyramidal) TIFFs with resolution tags. No public slide can be downloaded
here; these exercise the same readers (OpenSlide's generic-tiff and Aperio paths, tifffile).
The stitched ground truth is returned with each slide."""
import numpy as np
import tifffile

GLAS_MPP = 0.62005  # GlaS: 20x, 0.62005 µm/px (glas.grand-challenge.org/Dataset)


def canvas(images, masks=None, gap=96, columns=2, background=246):
  """(RGB canvas, label canvas, [(x, y, w, h)]): the images in a grid with `gap` px of
  near-white background between them; masks (if given) stitched the same way."""
  rows = -(-len(images) // columns)
  cell_h = max(i.shape[0] for i in images) + gap
  cell_w = max(i.shape[1] for i in images) + gap
  height, width = rows * cell_h + gap, columns * cell_w + gap
  rgb = np.full((height, width, 3), background, np.uint8)
  labels = np.zeros((height, width), np.int32)
  boxes = []
  for k, image in enumerate(images):
    y, x = gap + (k // columns) * cell_h, gap + (k % columns) * cell_w
    h, w = image.shape[:2]
    rgb[y:y + h, x:x + w] = image[..., :3]
    if masks is not None:
      labels[y:y + h, x:x + w] = masks[k]
    boxes.append((x, y, w, h))
  return rgb, labels, boxes


def write_tiff(path, rgb, *, mpp=GLAS_MPP, levels=3, tile=256, compression='jpeg',
               description=None, resolution=True):
  """A tiled TIFF whose levels are top-level pages (each half the last); mpp as resolution
  tags in pixels per centimetre (none with resolution=False); `description`: page 0's
  ImageDescription (an Aperio-style one makes OpenSlide use its Aperio reader)."""
  with tifffile.TiffWriter(path, bigtiff=True) as tif:
    level = rgb
    for i in range(levels):
      kwargs = {}
      if resolution:
        per_cm = 1e4 / (mpp * 2**i)
        kwargs.update(resolution=(per_cm, per_cm), resolutionunit='CENTIMETER')
      if i == 0 and description is not None:
        kwargs['description'] = description
      if compression == 'jpeg':
        kwargs['compressionargs'] = {'level': 90}
      tif.write(level, tile=(tile, tile), compression=compression, photometric='rgb',
                subfiletype=0 if i == 0 else 1, metadata=None, **kwargs)
      level = level[::2, ::2]
      if min(level.shape[:2]) < tile:
        break
  return path


def aperio_description(width, height, mpp=GLAS_MPP):
  """An ImageDescription in the Aperio SVS style (`Aperio Image Library`, `|MPP = ...`)."""
  return (f'Aperio Image Library v12.0.15\r\n{width}x{height} [0,0 {width}x{height}] '
          f'(256x256) JPEG/RGB Q=80|AppMag = 20|MPP = {mpp}')
