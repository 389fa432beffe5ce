"""The `imaging` schema as SQLAlchemy Core tables (the migrations are the source of truth)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Date, DateTime, ForeignKey, Integer, MetaData, Table, Text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID

from workers.runtime.tables import stamp_columns

metadata = MetaData(schema="imaging")


studies = Table(
    "studies",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("study_instance_uid", Text, nullable=False),
    Column("patient_id", UUID(as_uuid=True)),
    Column("match_status", Text, nullable=False),
    Column("patient_id_in_file", Text),
    Column("patient_name_in_file", Text),
    Column("patient_name_key", Text),
    Column("patient_birth_date", Text),
    Column("patient_sex", Text),
    Column("accession_number", Text),
    Column("study_id_tag", Text),
    Column("study_date", Date),
    Column("study_time", Text),
    Column("study_description", Text),
    Column("referring_physician_name", Text),
    Column("modalities_in_study", ARRAY(Text), nullable=False, server_default="{}"),
    Column("number_of_series", Integer, nullable=False, server_default="0"),
    Column("number_of_instances", Integer, nullable=False, server_default="0"),
    Column("status", Text, nullable=False, server_default="scanned"),
    Column("order_id", UUID(as_uuid=True)),
    Column("modality_machine_id", UUID(as_uuid=True)),
    Column("manifest_sha256", Text),
    Column("attributes", JSONB, nullable=False, server_default="{}"),
    Column("specific_character_set", Text),
    Column("received_at", DateTime(timezone=True), nullable=False),
    Column("last_instance_at", DateTime(timezone=True), nullable=False),
    Column("stable_at", DateTime(timezone=True)),
    Column("created_by", UUID(as_uuid=True)),
    *stamp_columns(),
)

series = Table(
    "series",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("study_id", UUID(as_uuid=True), ForeignKey("imaging.studies.id", ondelete="CASCADE"), nullable=False),
    Column("series_instance_uid", Text, nullable=False),
    Column("modality", Text),
    Column("series_number", Integer),
    Column("series_description", Text),
    Column("body_part_examined", Text),
    Column("series_date", Date),
    Column("series_time", Text),
    Column("protocol_name", Text),
    Column("number_of_instances", Integer, nullable=False, server_default="0"),
    Column("attributes", JSONB, nullable=False, server_default="{}"),
    Column("specific_character_set", Text),
    *stamp_columns(),
)

instances = Table(
    "instances",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True),
    Column("study_id", UUID(as_uuid=True), ForeignKey("imaging.studies.id", ondelete="CASCADE"), nullable=False),
    Column("series_id", UUID(as_uuid=True), ForeignKey("imaging.series.id", ondelete="CASCADE"), nullable=False),
    Column("sop_instance_uid", Text, nullable=False),
    Column("sop_class_uid", Text, nullable=False),
    Column("instance_number", Integer),
    Column("transfer_syntax_uid", Text, nullable=False),
    Column("number_of_frames", Integer, nullable=False, server_default="1"),
    Column("rows", Integer),
    Column("columns", Integer),
    Column("bits_allocated", Integer),
    Column("photometric_interpretation", Text),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("file_name", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("blob_key", Text, nullable=False),
    Column("metadata", Text, nullable=False),
    Column("pixel_data_offset", BigInteger),
    Column("pixel_data_length", BigInteger),
    Column("pixel_index", JSONB),
    Column("specific_character_set", Text),
    Column("stored_at", DateTime(timezone=True), nullable=False),
    Column("stored_by", UUID(as_uuid=True)),
)
