"""TFRecord framing without TensorFlow (tensorflow/core/lib/io/record_writer.h).

A record is: uint64 length, uint32 masked CRC-32C of the length, the data, uint32
masked CRC-32C of the data, all little-endian. data.py's pre-flight check reads this
framing; events.py writes TensorBoard event files with it.
"""

import struct

HEADER = struct.Struct('<QI')
FOOTER = struct.Struct('<I')


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
