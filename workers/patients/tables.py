"""The `patients` schema as SQLAlchemy Core tables (the migrations are the source of truth)."""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Date, DateTime, ForeignKey, Integer, MetaData, Numeric, Table, Text, func
from sqlalchemy.dialects.postgresql import ARRAY, UUID

from workers.runtime.tables import stamp_columns

metadata = MetaData(schema="patients")


patients = Table(
    "patients",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("mrn", Text, nullable=False),
    Column("first_name", Text, nullable=False),
    Column("last_name", Text, nullable=False),
    Column("date_of_birth", Date, nullable=False),
    Column("gender", Text, nullable=False),
    Column("phone", Text),
    Column("address", Text),
    Column("blood_type", Text, nullable=False, server_default="unknown"),
    Column("insurance_number", Text),
    Column("is_active", Boolean, nullable=False, server_default="true"),
    Column("created_by", UUID(as_uuid=True)),
    Column("deleted_at", DateTime(timezone=True)),
    Column("name_key", Text),  # generated: accent- and case-free "first last"
    Column("dup_key", Text),  # generated: accent- and case-free "first|last"
    Column("name_set", Text),  # generated: the accent- and case-free words of the name, distinct, sorted, spaced
    *stamp_columns(),
)

queue_counters = Table(
    "queue_counters",
    metadata,
    Column("room_id", UUID(as_uuid=True), primary_key=True),
    Column("business_date", Date, primary_key=True),
    Column("last_number", Integer, nullable=False),
)

encounters = Table(
    "encounters",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("patient_id", UUID(as_uuid=True), ForeignKey("patients.patients.id"), nullable=False),
    Column("service_room_id", UUID(as_uuid=True), nullable=False),
    Column("room_id", UUID(as_uuid=True), nullable=False),
    Column("service_id", UUID(as_uuid=True), nullable=False),
    Column("queue_number", Integer, nullable=False),
    Column("business_date", Date, nullable=False),
    Column("type", Text, nullable=False),
    Column("priority", Text, nullable=False, server_default="routine"),
    Column("status", Text, nullable=False, server_default="waiting"),
    Column("chief_complaint", Text),
    Column("symptoms", Text),
    Column("notes", Text),
    Column("assigned_physician_id", UUID(as_uuid=True)),
    Column("arrived_at", DateTime(timezone=True)),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("cancelled_at", DateTime(timezone=True)),
    Column("cancelled_by", UUID(as_uuid=True)),
    Column("cancel_reason", Text),
    Column("is_transferred", Boolean, nullable=False, server_default="false"),
    Column("transfer_notes", Text),
    Column("transferred_by", UUID(as_uuid=True)),
    Column("transferred_at", DateTime(timezone=True)),
    Column("previous_physician_id", UUID(as_uuid=True)),
    Column("previous_room_id", UUID(as_uuid=True)),
    Column("created_by", UUID(as_uuid=True)),
    *stamp_columns(),
)

vital_signs = Table(
    "vital_signs",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("encounter_id", UUID(as_uuid=True), ForeignKey("patients.encounters.id"), nullable=False),
    Column("patient_id", UUID(as_uuid=True), ForeignKey("patients.patients.id"), nullable=False),
    Column("code", Text, nullable=False),
    Column("value", Numeric(8, 2), nullable=False),
    Column("unit", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("recorded_by", UUID(as_uuid=True)),
    Column("derived", Boolean, nullable=False, server_default="false"),
    Column("status", Text, nullable=False, server_default="final"),
    Column("retract_reason", Text),
    Column("retracted_by", UUID(as_uuid=True)),
    Column("retracted_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("version", Integer, nullable=False, server_default="1"),
)

conditions = Table(
    "conditions",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=func.gen_random_uuid()),
    Column("patient_id", UUID(as_uuid=True), ForeignKey("patients.patients.id"), nullable=False),
    Column("encounter_id", UUID(as_uuid=True), ForeignKey("patients.encounters.id")),
    Column("code", Text, nullable=False),
    Column("code_system", Text, nullable=False),
    Column("code_display", Text),
    Column("clinical_status", Text, nullable=False, server_default="active"),
    Column("body_site", Text),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("recorded_by", UUID(as_uuid=True)),
    Column("notes", Text),
    Column("deleted_at", DateTime(timezone=True)),
    *stamp_columns(),
)

name_sets = Table("name_sets", metadata, Column("name_set", Text, primary_key=True), Column("words", ARRAY(Text)))
name_vocabulary = Table("name_vocabulary", metadata, Column("word", Text, primary_key=True))
