"""Patients domain: the registry, encounters with their daily room queues, vital signs, conditions.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

GENDERS = "('female','male','other','unknown')"
BLOOD = "('A+','A-','B+','B-','AB+','AB-','O+','O-','unknown')"
OPEN = "('waiting','arrived','in_progress')"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE TABLE patients.patients (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            mrn text NOT NULL,
            first_name text NOT NULL,
            last_name text NOT NULL,
            date_of_birth date NOT NULL,
            gender text NOT NULL CHECK (gender IN {GENDERS}),
            phone text,
            address text,
            blood_type text NOT NULL DEFAULT 'unknown' CHECK (blood_type IN {BLOOD}),
            insurance_number text,
            is_active boolean NOT NULL DEFAULT true,
            created_by uuid,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz,
            version integer NOT NULL DEFAULT 1,
            -- accent- and case-free names: what search, sorting of matches and the duplicate check use
            name_key text GENERATED ALWAYS AS
                (public.f_unaccent(lower(first_name || ' ' || last_name))) STORED,
            dup_key text GENERATED ALWAYS AS
                (public.f_unaccent(lower(first_name)) || '|' || public.f_unaccent(lower(last_name))) STORED,
            CHECK (mrn ~ '^[0-9A-HJKMNP-TV-Z]{{8}}$')
        )
        """
    )
    # MRNs are never reused: unique over every row, deleted ones included.
    op.execute("CREATE UNIQUE INDEX uq_patients_mrn ON patients.patients (mrn)")
    op.execute("CREATE INDEX ix_patients_name_trgm ON patients.patients USING gin (name_key gin_trgm_ops)")
    op.execute("CREATE INDEX ix_patients_name_knn ON patients.patients USING gist (name_key gist_trgm_ops)")
    op.execute("CREATE INDEX ix_patients_dup ON patients.patients (dup_key, date_of_birth) WHERE deleted_at IS NULL")
    op.execute("CREATE INDEX ix_patients_phone ON patients.patients (phone) WHERE phone IS NOT NULL")
    op.execute("CREATE INDEX ix_patients_insurance ON patients.patients (insurance_number) "
               "WHERE insurance_number IS NOT NULL")
    op.execute("CREATE INDEX ix_patients_dob ON patients.patients (date_of_birth)")
    op.execute("CREATE INDEX ix_patients_created ON patients.patients (created_at)")
    op.execute("CREATE INDEX ix_patients_last_name ON patients.patients (last_name, first_name)")
    op.execute(
        """
        CREATE TABLE patients.queue_counters (
            room_id uuid NOT NULL,
            business_date date NOT NULL,
            last_number integer NOT NULL,
            PRIMARY KEY (room_id, business_date)
        )
        """
    )
    op.execute(
        f"""
        CREATE TABLE patients.encounters (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            patient_id uuid NOT NULL REFERENCES patients.patients (id),
            service_room_id uuid NOT NULL,
            room_id uuid NOT NULL,
            service_id uuid NOT NULL,
            queue_number integer NOT NULL,
            business_date date NOT NULL,
            type text NOT NULL CHECK (type IN ('outpatient','inpatient','emergency','follow_up')),
            priority text NOT NULL DEFAULT 'routine' CHECK (priority IN ('routine','urgent','stat')),
            status text NOT NULL DEFAULT 'waiting'
                CHECK (status IN ('waiting','arrived','in_progress','finished','cancelled')),
            chief_complaint text,
            symptoms text,
            notes text,
            assigned_physician_id uuid,
            arrived_at timestamptz,
            started_at timestamptz,
            finished_at timestamptz,
            cancelled_at timestamptz,
            cancelled_by uuid,
            cancel_reason text,
            is_transferred boolean NOT NULL DEFAULT false,
            transfer_notes text,
            transferred_by uuid,
            transferred_at timestamptz,
            previous_physician_id uuid,
            previous_room_id uuid,
            created_by uuid,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            version integer NOT NULL DEFAULT 1
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX uq_encounters_queue ON patients.encounters (room_id, business_date, queue_number)")
    op.execute(f"CREATE UNIQUE INDEX uq_encounters_open ON patients.encounters (patient_id, room_id, business_date) "
               f"WHERE status IN {OPEN}")
    op.execute("CREATE INDEX ix_encounters_patient ON patients.encounters (patient_id, created_at DESC)")
    op.execute("CREATE INDEX ix_encounters_room_day ON patients.encounters (room_id, business_date, status)")
    op.execute(f"CREATE INDEX ix_encounters_physician ON patients.encounters (assigned_physician_id, status) "
               f"WHERE status IN {OPEN}")
    op.execute("CREATE INDEX ix_encounters_expire ON patients.encounters (business_date) "
               "WHERE status IN ('waiting', 'arrived')")
    op.execute("CREATE INDEX ix_encounters_created ON patients.encounters (created_at)")
    op.execute(
        """
        CREATE TABLE patients.vital_signs (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            encounter_id uuid NOT NULL REFERENCES patients.encounters (id),
            patient_id uuid NOT NULL REFERENCES patients.patients (id),
            code text NOT NULL,
            value numeric(8, 2) NOT NULL,
            unit text NOT NULL,
            recorded_at timestamptz NOT NULL,
            recorded_by uuid,
            derived boolean NOT NULL DEFAULT false,
            status text NOT NULL DEFAULT 'final' CHECK (status IN ('final', 'entered_in_error')),
            retract_reason text,
            retracted_by uuid,
            retracted_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            version integer NOT NULL DEFAULT 1
        )
        """
    )
    op.execute("CREATE INDEX ix_vital_signs_patient ON patients.vital_signs (patient_id, code, recorded_at DESC)")
    op.execute("CREATE INDEX ix_vital_signs_encounter ON patients.vital_signs (encounter_id)")
    op.execute(
        """
        CREATE TABLE patients.conditions (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            patient_id uuid NOT NULL REFERENCES patients.patients (id),
            encounter_id uuid REFERENCES patients.encounters (id),
            code text NOT NULL,
            code_system text NOT NULL DEFAULT 'http://hl7.org/fhir/sid/icd-10',
            code_display text,
            clinical_status text NOT NULL DEFAULT 'active'
                CHECK (clinical_status IN ('active','recurrent','inactive','remission','resolved')),
            body_site text,
            recorded_at timestamptz NOT NULL DEFAULT now(),
            recorded_by uuid,
            notes text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz,
            version integer NOT NULL DEFAULT 1
        )
        """
    )
    op.execute("CREATE INDEX ix_conditions_patient ON patients.conditions (patient_id, recorded_at DESC) "
               "WHERE deleted_at IS NULL")


def downgrade() -> None:
    for table in ("conditions", "vital_signs", "encounters", "queue_counters", "patients"):
        op.execute(f"DROP TABLE patients.{table}")
