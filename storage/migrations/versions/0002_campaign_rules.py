"""campaign rules: program settings, delivery due time, indexes for purchase aggregates and caps

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('program') as batch:
        batch.add_column(sa.Column('settings', sa.JSON(), nullable=False, server_default='{}'))
    with op.batch_alter_table('delivery') as batch:
        batch.add_column(sa.Column('due_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_delivery_member_sent', 'delivery', ['member_id', 'sent_at'])
    op.create_index('ix_event_member_type_at', 'event', ['member_id', 'type', 'occurred_at'])


def downgrade() -> None:
    op.drop_index('ix_event_member_type_at', table_name='event')
    op.drop_index('ix_delivery_member_sent', table_name='delivery')
    with op.batch_alter_table('delivery') as batch:
        batch.drop_column('due_at')
    with op.batch_alter_table('program') as batch:
        batch.drop_column('settings')
