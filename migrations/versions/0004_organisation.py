"""Users domain, organisation: rooms, services, and which service is offered in which room.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ROOM_TYPES = "('ct','mri','x_ray','ultrasound','respiratory','general','wc')"


def upgrade() -> None:
    op.execute(
        f"""
        CREATE TABLE users.rooms (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            code text NOT NULL,
            type text NOT NULL DEFAULT 'general' CHECK (type IN {ROOM_TYPES}),
            department_id uuid NOT NULL REFERENCES users.departments (id),
            floor integer CHECK (floor BETWEEN -5 AND 200),
            capacity integer NOT NULL DEFAULT 1 CHECK (capacity BETWEEN 1 AND 100),
            price_per_day numeric(10, 2) CHECK (price_per_day >= 0),
            status text NOT NULL DEFAULT 'available' CHECK (status IN ('available', 'maintenance')),
            on_duty_count integer NOT NULL DEFAULT 0,
            amenities text[] NOT NULL DEFAULT '{{}}',
            description text,
            notes text,
            is_active boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz,
            version integer NOT NULL DEFAULT 1
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX uq_rooms_code ON users.rooms (code) WHERE deleted_at IS NULL")
    op.execute("CREATE INDEX ix_rooms_department ON users.rooms (department_id) WHERE deleted_at IS NULL")
    op.execute(
        "CREATE INDEX ix_rooms_search ON users.rooms USING gin "
        "(public.f_unaccent(lower(code || ' ' || coalesce(description, ''))) gin_trgm_ops)"
    )
    op.execute(
        """
        CREATE TABLE users.services (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            code text NOT NULL,
            name text NOT NULL,
            description text,
            is_active boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz,
            version integer NOT NULL DEFAULT 1
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX uq_services_code ON users.services (code) WHERE deleted_at IS NULL")
    op.execute("CREATE UNIQUE INDEX uq_services_name ON users.services (lower(name)) WHERE deleted_at IS NULL")
    op.execute(
        "CREATE INDEX ix_services_search ON users.services USING gin "
        "(public.f_unaccent(lower(code || ' ' || name)) gin_trgm_ops)"
    )
    op.execute(
        """
        CREATE TABLE users.service_rooms (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            service_id uuid NOT NULL REFERENCES users.services (id),
            room_id uuid NOT NULL REFERENCES users.rooms (id),
            is_active boolean NOT NULL DEFAULT true,
            notes text,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz,
            version integer NOT NULL DEFAULT 1
        )
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX uq_service_rooms_pair ON users.service_rooms (service_id, room_id) "
        "WHERE deleted_at IS NULL"
    )
    op.execute("CREATE INDEX ix_service_rooms_room ON users.service_rooms (room_id) WHERE deleted_at IS NULL")


def downgrade() -> None:
    op.execute("DROP TABLE users.service_rooms")
    op.execute("DROP TABLE users.services")
    op.execute("DROP TABLE users.rooms")
