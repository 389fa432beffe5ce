"""Users domain: staff accounts and departments.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ROLES = "('system_admin','physician','radiologist','imaging_technician','reception_staff')"


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE users.departments (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            code text NOT NULL,
            name text NOT NULL,
            description text,
            head_user_id uuid,
            is_active boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz,
            version integer NOT NULL DEFAULT 1
        )
        """
    )
    op.execute(
        "CREATE UNIQUE INDEX uq_departments_code ON users.departments (code) WHERE deleted_at IS NULL"
    )
    op.execute(
        "CREATE INDEX ix_departments_search ON users.departments USING gin "
        "(public.f_unaccent(lower(code || ' ' || name)) gin_trgm_ops)"
    )
    op.execute(
        f"""
        CREATE TABLE users.users (
            id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
            username text NOT NULL,
            email text NOT NULL,
            password_hash text NOT NULL,
            first_name text NOT NULL,
            last_name text NOT NULL,
            phone text,
            staff_number text,
            role text NOT NULL CHECK (role IN {ROLES}),
            department_id uuid REFERENCES users.departments (id),
            is_active boolean NOT NULL DEFAULT true,
            email_otp_enabled boolean NOT NULL DEFAULT false,
            must_change_password boolean NOT NULL DEFAULT true,
            last_login_at timestamptz,
            password_changed_at timestamptz NOT NULL DEFAULT now(),
            created_by uuid,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            deleted_at timestamptz,
            version integer NOT NULL DEFAULT 1,
            CHECK (username = lower(username)),
            CHECK (email = lower(email))
        )
        """
    )
    op.execute("CREATE UNIQUE INDEX uq_users_username ON users.users (username) WHERE deleted_at IS NULL")
    op.execute("CREATE UNIQUE INDEX uq_users_email ON users.users (email) WHERE deleted_at IS NULL")
    op.execute(
        "CREATE UNIQUE INDEX uq_users_staff_number ON users.users (staff_number) "
        "WHERE deleted_at IS NULL AND staff_number IS NOT NULL"
    )
    op.execute("CREATE INDEX ix_users_department ON users.users (department_id) WHERE deleted_at IS NULL")
    op.execute("CREATE INDEX ix_users_role ON users.users (role)")
    op.execute("CREATE INDEX ix_users_created_at ON users.users (created_at)")
    op.execute(
        "CREATE INDEX ix_users_search ON users.users USING gin (public.f_unaccent(lower("
        "username || ' ' || email || ' ' || first_name || ' ' || last_name || ' ' || coalesce(staff_number, '')"
        ")) gin_trgm_ops)"
    )
    op.execute(
        "ALTER TABLE users.departments ADD CONSTRAINT fk_departments_head "
        "FOREIGN KEY (head_user_id) REFERENCES users.users (id)"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE users.departments DROP CONSTRAINT fk_departments_head")
    op.execute("DROP TABLE users.users")
    op.execute("DROP TABLE users.departments")
