"""The data: TFRecord framing, image bytes, the converter (records, record_folder), a data
folder and its dataset.json (data_folder), the pre-flight and record checks, a team's record
schema (record_schema), and the seed's input pipeline both runners read (pipeline).

May import runtime/ and runs/.
"""
