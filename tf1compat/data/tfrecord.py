"""TFRecord framing without TensorFlow (tensorflow/core/lib/io/record_writer.h).

A record is: uint64 length, uint32 masked CRC-32C of the length, the data, uint32
masked CRC-32C of the data, all little-endian. `walk` reads this framing (the
pre-flight check, and the naming of a record TensorFlow's reader rejected, go through
files with it); `frame` writes it (events.py writes TensorBoard event files with it).
"""

from __future__ import annotations

import dataclasses
import os
import struct

HEADER = struct.Struct('<QI')
FOOTER = struct.Struct('<I')
OVERHEAD = HEADER.size + FOOTER.size
# The damage of a file whose first record header fails its checksum.
NOT_A_TFRECORD = 'not a TFRecord file (its first 12 bytes are no record header)'


def _crc32c_table():
  table = []
  for value in range(256):
    for _ in range(8):
      value = (value >> 1) ^ 0x82F63B78 if value & 1 else value >> 1
    table.append(value)
  return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def masked_crc32c(data):
  """The masked CRC-32C (Castagnoli) TFRecord files store for `data`."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  crc ^= 0xFFFFFFFF
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame(data):
  """`data` as one framed record, ready to append to a TFRecord file."""
  length = struct.pack('<Q', len(data))
  return (length + FOOTER.pack(masked_crc32c(length)) + data +
          FOOTER.pack(masked_crc32c(data)))


@dataclasses.dataclass(frozen=True)
class Record:
  """One record of a TFRecord file as its framing says.

  `offset`: the byte its header starts at. `length`: its data's length (None when it
  is damaged). `data`: its bytes, when they were read. `crc`: the masked CRC-32C of
  the data as its writer stored it (None when damaged): a content hash of the record
  that a damaged copy of the data does not change. `damage`: why the file cannot be
  read from this record on, or None.
  """
  index: int
  offset: int
  length: int | None
  data: bytes | None = None
  crc: int | None = None
  damage: str | None = None


def _damage(header, index, offset, size):
  """Why a record header at `offset` cannot start a readable record, or None."""
  if len(header) < HEADER.size:
    return f'the file ends inside the header of the record at byte {offset}: it is truncated'
  length, length_crc = HEADER.unpack(header)
  if masked_crc32c(header[:8]) != length_crc:
    if index == 0:
      return NOT_A_TFRECORD
    return f'the record header at byte {offset} is damaged (checksum mismatch)'
  if offset + OVERHEAD + length > size:
    return (f'the record at byte {offset} needs {length + OVERHEAD} bytes but the file ends '
            f'{size - offset} bytes after its start: the file is truncated')
  return None


def walk(path, read_data=True):
  """Yields the Record of each record of the TFRecord file at `path`, in file order.

  Each header's checksum is verified, the data's is not (see `data_intact`). A damaged
  record (truncated, or a header that fails its checksum) is the last one yielded. With
  `read_data` False the data is skipped over, not read (its stored CRC is).
  """
  size = os.path.getsize(path)
  with open(path, 'rb') as f:
    index = offset = 0
    while offset < size:
      f.seek(offset)
      header = f.read(HEADER.size)
      damage = _damage(header, index, offset, size)
      if damage:
        yield Record(index, offset, None, damage=damage)
        return
      length = HEADER.unpack(header)[0]
      if read_data:
        data = f.read(length)
      else:
        data = None
        f.seek(offset + HEADER.size + length)
      crc = FOOTER.unpack(f.read(FOOTER.size))[0]
      yield Record(index, offset, length, data, crc)
      offset += length + OVERHEAD
      index += 1


def data_intact(path, record):
  """Whether the data of `record` (a Record of the file at `path`) matches its CRC-32C.

  Python's CRC-32C runs at about 18 MB/s (a minute for Caltech256), so `walk` leaves
  this to callers that check one record (the pre-flight check has TensorFlow's reader
  verify every record: data_check).
  """
  with open(path, 'rb') as f:
    f.seek(record.offset + HEADER.size)
    return masked_crc32c(f.read(record.length)) == record.crc
