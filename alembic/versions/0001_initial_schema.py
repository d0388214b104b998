"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-28 07:31:30.415521
"""

from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('tenants',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_hash')
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_api_keys_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('dataset_records',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('num_samples', sa.BigInteger(), nullable=False),
    sa.Column('arrays', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('dataset_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_dataset_records_sha256'), ['sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_dataset_records_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('model_records',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('format', sa.String(length=32), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('uri', sa.Text(), nullable=False),
    sa.Column('inputs', sa.JSON(), nullable=False),
    sa.Column('outputs', sa.JSON(), nullable=False),
    sa.Column('parameter_count', sa.BigInteger(), nullable=False),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('parent_id', sa.String(length=32), nullable=True),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['parent_id'], ['model_records.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('model_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_model_records_job_id'), ['job_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_model_records_parent_id'), ['parent_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_model_records_sha256'), ['sha256'], unique=False)
        batch_op.create_index(batch_op.f('ix_model_records_tenant_id'), ['tenant_id'], unique=False)

    op.create_table('job_records',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('model_id', sa.String(length=32), nullable=True),
    sa.Column('dataset_id', sa.String(length=32), nullable=True),
    sa.Column('technique', sa.String(length=100), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('device', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('stage', sa.String(length=200), nullable=True),
    sa.Column('error', sa.JSON(), nullable=True),
    sa.Column('report', sa.JSON(), nullable=True),
    sa.Column('output_model_id', sa.String(length=32), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['dataset_id'], ['dataset_records.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['model_id'], ['model_records.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['output_model_id'], ['model_records.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('job_records', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_job_records_model_id'), ['model_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_records_status'), ['status'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_records_technique'), ['technique'], unique=False)
        batch_op.create_index(batch_op.f('ix_job_records_tenant_id'), ['tenant_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('job_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_job_records_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_job_records_technique'))
        batch_op.drop_index(batch_op.f('ix_job_records_status'))
        batch_op.drop_index(batch_op.f('ix_job_records_model_id'))

    op.drop_table('job_records')
    with op.batch_alter_table('model_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_model_records_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_model_records_sha256'))
        batch_op.drop_index(batch_op.f('ix_model_records_parent_id'))
        batch_op.drop_index(batch_op.f('ix_model_records_job_id'))

    op.drop_table('model_records')
    with op.batch_alter_table('dataset_records', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_dataset_records_tenant_id'))
        batch_op.drop_index(batch_op.f('ix_dataset_records_sha256'))

    op.drop_table('dataset_records')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_tenant_id'))

    op.drop_table('api_keys')
    op.drop_table('tenants')
