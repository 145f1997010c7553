"""templates: stored versions (pinned at launch, imported), their images, the versions a campaign launched
with, coupon code pools

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'template_version',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('name', sa.String(64), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('files', sa.JSON(), nullable=False),
        sa.Column('source', sa.String(16), nullable=False),
        sa.Column('note', sa.String(500), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('name', 'version', name='uq_template_version'),
    )
    op.create_table(
        'template_asset',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('name', sa.String(64), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('path', sa.String(255), nullable=False),
        sa.Column('media_type', sa.String(64), nullable=False),
        sa.Column('content', sa.LargeBinary(), nullable=False),
        sa.UniqueConstraint('name', 'version', 'path', name='uq_template_asset'),
    )
    with op.batch_alter_table('campaign') as batch:
        batch.add_column(sa.Column('template_versions', sa.JSON(), nullable=True))
    op.create_table(
        'coupon_code',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('program_id', sa.Integer(), sa.ForeignKey('program.id'), nullable=False),
        sa.Column('pool', sa.String(64), nullable=False),
        sa.Column('code', sa.String(64), nullable=False),
        sa.Column('member_id', sa.Integer(), sa.ForeignKey('member.id'), nullable=True),
        sa.Column('assigned_at', sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint('program_id', 'pool', 'code', name='uq_coupon_code'),
        sa.UniqueConstraint('program_id', 'pool', 'member_id', name='uq_coupon_member'),
    )
    op.create_index('ix_coupon_free', 'coupon_code', ['program_id', 'pool', 'member_id'])


def downgrade() -> None:
    op.drop_index('ix_coupon_free', table_name='coupon_code')
    op.drop_table('coupon_code')
    with op.batch_alter_table('campaign') as batch:
        batch.drop_column('template_versions')
    op.drop_table('template_asset')
    op.drop_table('template_version')
