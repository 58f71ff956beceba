"""What encoded image bytes are, read without decoding them: the format, and a JPEG's
marker segments (its frame header's colour components, or why it cannot decode).

The pre-flight check of the records and the converter (`records`) both read images
here. TensorFlow-free.
"""

_FORMATS = 'JPEG, PNG, GIF, BMP or WebP'
_SOI = b'\xff\xd8'  # start of image
_EOI = 0xD9  # end of image
_SOS = 0xDA  # start of scan: the entropy-coded image data follows
# Markers without a length field: TEM and the restart markers RST0..RST7.
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
# SOF0..SOF15 carry the frame header; C4 (DHT), C8 (JPG) and CC (DAC) do not.
_FRAME_HEADERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_segments(blob):
  """Yields (marker, position) of the marker segments of JPEG bytes after their SOI.

  Stops after an EOI or the first SOS (past it, the image data is entropy-coded), or
  at a byte where a marker should start and does not: that yields (None, position).
  """
  pos = len(_SOI)
  while pos + 4 <= len(blob):
    if blob[pos] != 0xFF:
      yield None, pos
      return
    marker = blob[pos + 1]
    if marker == 0xFF:  # fill byte
      pos += 1
      continue
    yield marker, pos
    if marker in (_EOI, _SOS):
      return
    pos += 2 if marker in _STANDALONE else 2 + int.from_bytes(blob[pos + 2:pos + 4], 'big')


def jpeg_components(blob):
  """Number of colour components of a baseline/progressive JPEG, or None if not a JPEG.

  TensorFlow decodes CMYK JPEGs to RGB silently, so the component count in the
  start-of-frame header is the only way to tell a CMYK or grey JPEG from an RGB one.
  """
  if blob[:2] != _SOI:
    return None
  for marker, pos in jpeg_segments(blob):
    if marker in _FRAME_HEADERS:
      return blob[pos + 9] if pos + 9 < len(blob) else None
  return None


def _jpeg_problem(blob):
  """Why JPEG bytes cannot decode (no frame, no scan, cut short), or None.

  The image must end with an EOI marker after its first scan (0xFF 0xD9 cannot occur
  inside entropy-coded data, where 0xFF is stuffed).
  """
  frame = False
  for marker, pos in jpeg_segments(blob):
    if marker is None:
      return 'a damaged JPEG (a marker segment is missing)'
    if marker == _EOI:
      return 'a JPEG without image data'
    if marker == _SOS:
      if not frame:
        return 'a damaged JPEG (no frame header before its image data)'
      if blob.rfind(b'\xff\xd9', pos + 2) < 0:
        return 'a truncated JPEG (no end-of-image marker)'
      return None
    frame = frame or marker in _FRAME_HEADERS
  return 'a truncated JPEG (it ends before its image data)'


def problem(blob):
  """Why `blob` is not an image the input pipeline decodes, or None.

  The formats `tf.io.decode_image` reads; JPEG and PNG are checked for being whole.
  """
  if blob[:3] == _SOI + b'\xff':
    return _jpeg_problem(blob)
  if blob[:8] == b'\x89PNG\r\n\x1a\n':
    return None if blob.rfind(b'IEND') > 8 else 'a truncated PNG (no IEND chunk)'
  if blob[:6] in (b'GIF87a', b'GIF89a') or blob[:2] == b'BM' or (
      blob[:4] == b'RIFF' and blob[8:12] == b'WEBP'):
    return None
  return f'not an image ({len(blob)} bytes starting {blob[:8]!r}; expected {_FORMATS})'
