"""channels: provider accounts, stored messages (receipt, inbox, direct mail), sandbox outbox, shared rate
limits, member postal address and WhatsApp window, delivery fallback attempts, provider message id index, card numbers for the till,
one-time member links (Telegram deep links), status reports that beat their message id

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('member') as batch:
        batch.add_column(sa.Column('postal_address', sa.JSON(), nullable=True))
        batch.add_column(sa.Column('whatsapp_inbound_at', sa.DateTime(timezone=True), nullable=True))
    op.create_index('ix_member_phone', 'member', ['program_id', 'phone'])
    op.create_index('ix_member_telegram', 'member', ['program_id', 'telegram_chat_id'])
    op.create_index('ix_card_number', 'card', ['number'])
    with op.batch_alter_table('delivery') as batch:
        batch.add_column(sa.Column('attempts', sa.JSON(), nullable=True))
    op.create_index('ix_delivery_provider_message', 'delivery', ['provider_message_id'])
    op.create_table(
        'stored_message',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('program_id', sa.Integer(), sa.ForeignKey('program.id'), nullable=False),
        sa.Column('campaign_id', sa.Integer(), sa.ForeignKey('campaign.id'), nullable=False),
        sa.Column('member_id', sa.Integer(), sa.ForeignKey('member.id'), nullable=False),
        sa.Column('delivery_id', sa.Integer(), sa.ForeignKey('delivery.id'), nullable=False, unique=True),
        sa.Column('channel', sa.String(16), nullable=False),
        sa.Column('title', sa.String(500), nullable=True),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('link', sa.String(2048), nullable=True),
        sa.Column('coupon', sa.String(64), nullable=True),
        sa.Column('locale', sa.String(35), nullable=True),
        sa.Column('data', sa.JSON(), nullable=False),
        sa.Column('state', sa.String(16), nullable=False),
        sa.Column('reserved_by', sa.String(128), nullable=True),
        sa.Column('reserved_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('receipt_number', sa.String(64), nullable=True),
        sa.Column('batch', sa.String(200), nullable=True),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_stored_message_member', 'stored_message', ['member_id', 'channel', 'state'])
    op.create_index('ix_stored_message_batch', 'stored_message', ['campaign_id', 'channel', 'state'])
    op.create_table(
        'channel_account',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('program_id', sa.Integer(), sa.ForeignKey('program.id'), nullable=False),
        sa.Column('channel', sa.String(16), nullable=False),
        sa.Column('provider', sa.String(32), nullable=False),
        sa.Column('config', sa.JSON(), nullable=False),
        sa.Column('rate_per_s', sa.Float(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint('program_id', 'channel', name='uq_channel_account'),
    )
    op.create_table(
        'sandbox_message',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('program_id', sa.Integer(), sa.ForeignKey('program.id'), nullable=True),
        sa.Column('delivery_id', sa.Integer(), nullable=True),
        sa.Column('channel', sa.String(16), nullable=False),
        sa.Column('provider', sa.String(32), nullable=False),
        sa.Column('method', sa.String(8), nullable=False),
        sa.Column('url', sa.String(2048), nullable=False),
        sa.Column('headers', sa.JSON(), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_sandbox_message_program_id', 'sandbox_message', ['program_id'])
    op.create_index('ix_sandbox_message_delivery_id', 'sandbox_message', ['delivery_id'])
    op.create_table(
        'early_status',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('provider_message_id', sa.String(255), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('error_code', sa.String(64), nullable=True),
        sa.Column('event_id', sa.String(255), nullable=False, unique=True),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_early_status_provider_message_id', 'early_status', ['provider_message_id'])
    op.create_table(
        'member_link',
        sa.Column('token_hash', sa.String(64), primary_key=True),
        sa.Column('program_id', sa.Integer(), sa.ForeignKey('program.id'), nullable=False),
        sa.Column('member_id', sa.Integer(), sa.ForeignKey('member.id'), nullable=False),
        sa.Column('channel', sa.String(16), nullable=False),
        sa.Column('topics', sa.JSON(), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('used_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_member_link_member_id', 'member_link', ['member_id'])
    op.create_table(
        'rate_limit',
        sa.Column('key', sa.String(128), primary_key=True),
        sa.Column('tat', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table('rate_limit')
    op.drop_index('ix_early_status_provider_message_id', table_name='early_status')
    op.drop_table('early_status')
    op.drop_index('ix_member_link_member_id', table_name='member_link')
    op.drop_table('member_link')
    op.drop_index('ix_sandbox_message_delivery_id', table_name='sandbox_message')
    op.drop_index('ix_sandbox_message_program_id', table_name='sandbox_message')
    op.drop_table('sandbox_message')
    op.drop_table('channel_account')
    op.drop_index('ix_stored_message_batch', table_name='stored_message')
    op.drop_index('ix_stored_message_member', table_name='stored_message')
    op.drop_table('stored_message')
    op.drop_index('ix_delivery_provider_message', table_name='delivery')
    with op.batch_alter_table('delivery') as batch:
        batch.drop_column('attempts')
    op.drop_index('ix_card_number', table_name='card')
    op.drop_index('ix_member_telegram', table_name='member')
    op.drop_index('ix_member_phone', table_name='member')
    with op.batch_alter_table('member') as batch:
        batch.drop_column('whatsapp_inbound_at')
        batch.drop_column('postal_address')
