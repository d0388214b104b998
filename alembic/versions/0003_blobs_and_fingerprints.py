"""stored blobs, one row per file, to lock on; request fingerprints on idempotency keys

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("uri", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uri"),
    )
    # Every file already referenced gets its row, so the first delete after the upgrade locks it.
    op.execute("INSERT INTO blobs (uri, created_at) SELECT uri, MIN(created_at) FROM ("
               "SELECT uri, created_at FROM model_records UNION ALL SELECT uri, created_at FROM dataset_records"
               ") AS refs GROUP BY uri")
    with op.batch_alter_table("idempotency_keys") as batch_op:
        batch_op.add_column(sa.Column("fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch_op:
        batch_op.drop_column("fingerprint")
    op.drop_table("blobs")
