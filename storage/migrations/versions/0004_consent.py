"""consent: proof of the text shown (hash), double opt-in requests, member preferences and erasure

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('consent_record') as batch:
        batch.add_column(sa.Column('text_hash', sa.String(64), nullable=True))
    with op.batch_alter_table('member') as batch:
        batch.add_column(sa.Column('preferences', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('erased_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        'confirmation',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('program_id', sa.Integer(), sa.ForeignKey('program.id'), nullable=False),
        sa.Column('member_id', sa.Integer(), sa.ForeignKey('member.id'), nullable=False),
        sa.Column('channel', sa.String(16), nullable=False),
        sa.Column('address', sa.String(320), nullable=True),
        sa.Column('topics', sa.JSON(), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('provider_message_id', sa.String(255), nullable=True),
        sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('confirmed_at', sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index('ix_confirmation_member_id', 'confirmation', ['member_id'])
    op.create_index('ix_confirmation_status', 'confirmation', ['status', 'requested_at'])


def downgrade() -> None:
    op.drop_index('ix_confirmation_status', table_name='confirmation')
    op.drop_index('ix_confirmation_member_id', table_name='confirmation')
    op.drop_table('confirmation')
    with op.batch_alter_table('member') as batch:
        batch.drop_column('erased_at')
        batch.drop_column('preferences')
    with op.batch_alter_table('consent_record') as batch:
        batch.drop_column('text_hash')
