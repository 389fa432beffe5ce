"""Users domain, scheduling: shift templates, room schedules, employee room assignments.

Overlaps are refused by the database, not by application code: non-cancelled schedules of one room
never overlap, and an employee's active assignments never overlap (exclusion constraints over
`tstzrange(starts_at, ends_at, '[)')`, so back-to-back shifts are fine and overnight ones just work).

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE users.shift_templates (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            name text NOT NULL,
            shift_type text NOT NULL CHECK (shift_type IN ('morning','afternoon','night','full_day','custom')),
            start_time time NOT NULL,
            end_time time NOT NULL,
            break_start_time time,
            break_end_time time,
            description text,
            is_active boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz,
            version integer NOT NULL DEFAULT 1,
            CHECK (start_time <> end_time),
            CHECK ((break_start_time IS NULL) = (break_end_time IS NULL))
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX uq_shift_templates_name ON users.shift_templates (lower(name)) "
               "WHERE deleted_at IS NULL")
    op.execute(
        """
        CREATE TABLE users.room_schedules (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            room_id uuid NOT NULL REFERENCES users.rooms (id),
            shift_template_id uuid REFERENCES users.shift_templates (id),
            work_date date NOT NULL,
            start_time time NOT NULL,
            end_time time NOT NULL,
            starts_at timestamptz NOT NULL,
            ends_at timestamptz NOT NULL,
            status text NOT NULL DEFAULT 'scheduled'
                CHECK (status IN ('scheduled','in_progress','completed','cancelled')),
            actual_end_at timestamptz,
            overtime_hours numeric(4, 2) NOT NULL DEFAULT 0 CHECK (overtime_hours BETWEEN 0 AND 24),
            notes text,
            cancel_reason text,
            created_by uuid,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            version integer NOT NULL DEFAULT 1,
            CHECK (ends_at > starts_at),
            CONSTRAINT ex_room_schedules_overlap EXCLUDE USING gist
                (room_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&) WHERE (status <> 'cancelled')
        )
        """
    )
    op.execute("CREATE INDEX ix_room_schedules_room_start ON users.room_schedules (room_id, starts_at)")
    op.execute("CREATE INDEX ix_room_schedules_due ON users.room_schedules (status, starts_at) "
               "WHERE status IN ('scheduled', 'in_progress')")
    op.execute("CREATE INDEX ix_room_schedules_work_date ON users.room_schedules (work_date)")
    op.execute(
        """
        CREATE TABLE users.employee_room_assignments (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            room_schedule_id uuid NOT NULL REFERENCES users.room_schedules (id) ON DELETE CASCADE,
            employee_id uuid NOT NULL REFERENCES users.users (id),
            room_id uuid NOT NULL REFERENCES users.rooms (id),
            starts_at timestamptz NOT NULL,
            ends_at timestamptz NOT NULL,
            is_active boolean NOT NULL DEFAULT true,
            created_by uuid,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            version integer NOT NULL DEFAULT 1,
            CONSTRAINT uq_assignment_schedule_employee UNIQUE (room_schedule_id, employee_id),
            CONSTRAINT ex_assignment_employee_overlap EXCLUDE USING gist
                (employee_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&) WHERE (is_active)
        )
        """
    )
    # "Who is on duty in room R at t": one range lookup.
    op.execute(
        "CREATE INDEX ix_assignments_room_now ON users.employee_room_assignments USING gist "
        "(room_id, tstzrange(starts_at, ends_at, '[)')) WHERE is_active"
    )
    op.execute("CREATE INDEX ix_assignments_schedule ON users.employee_room_assignments (room_schedule_id)")
    # An employee's assignments by time (lists, "mine", stats); the active ones also have the exclusion's gist.
    op.execute("CREATE INDEX ix_assignments_employee_start ON users.employee_room_assignments (employee_id, starts_at)")


def downgrade() -> None:
    op.execute("DROP TABLE users.employee_room_assignments")
    op.execute("DROP TABLE users.room_schedules")
    op.execute("DROP TABLE users.shift_templates")
