"""effectiveness: responses kept on the delivery row (one bit per kind, attributed revenue), the report segment,
the response's campaign (daily curve) and detail, and the indexes the campaign report reads

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

# analytics.responses.BITS at the time of this migration (the migration must not import the code)
BITS = {'opened': 1, 'opened_machine': 2, 'clicked': 4 | 1, 'replied': 8, 'unsubscribed': 16, 'complained': 32,
        'converted': 64, 'dismissed': 128, 'clicked_machine': 512}


def upgrade() -> None:
    with op.batch_alter_table('delivery') as batch:
        batch.add_column(sa.Column('segment', sa.String(64), nullable=True))
        batch.add_column(sa.Column('response_flags', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('revenue', sa.Numeric(14, 4), nullable=True))
        batch.drop_index('ix_delivery_campaign_status')
        batch.create_index('ix_delivery_report', ['campaign_id', 'status', 'step', 'channel', 'locale', 'variant',
                                                  'segment', 'reason', 'response_flags', 'cost', 'revenue'])
        batch.create_index('ix_delivery_campaign_sent', ['campaign_id', 'sent_at', 'status', 'cost'])
    with op.batch_alter_table('response') as batch:
        batch.add_column(sa.Column('campaign_id', sa.Integer(), sa.ForeignKey('campaign.id',
                                                                              name='fk_response_campaign'),
                                   nullable=True))
        batch.add_column(sa.Column('detail', sa.String(255), nullable=True))
        batch.create_index('ix_response_campaign_at', ['campaign_id', 'at', 'kind', 'detail', 'value'])
    # responses recorded before: their campaign, and their bits and revenue on the delivery
    op.execute("UPDATE response SET campaign_id = (SELECT d.campaign_id FROM delivery d "
               "WHERE d.id = response.delivery_id)")
    for kind, bit in BITS.items():
        op.execute(f"UPDATE delivery SET response_flags = response_flags | {bit} WHERE id IN "
                   f"(SELECT r.delivery_id FROM response r WHERE r.kind = '{kind}')")
    op.execute("UPDATE delivery SET revenue = (SELECT SUM(r.value) FROM response r WHERE r.delivery_id = delivery.id "
               "AND r.kind = 'converted') WHERE id IN (SELECT r.delivery_id FROM response r "
               "WHERE r.kind = 'converted' AND r.value IS NOT NULL)")


def downgrade() -> None:
    with op.batch_alter_table('response') as batch:
        batch.drop_index('ix_response_campaign_at')
        batch.drop_column('detail')
        batch.drop_column('campaign_id')
    with op.batch_alter_table('delivery') as batch:
        batch.drop_index('ix_delivery_campaign_sent')
        batch.drop_index('ix_delivery_report')
        batch.create_index('ix_delivery_campaign_status', ['campaign_id', 'status'])
        batch.drop_column('revenue')
        batch.drop_column('response_flags')
        batch.drop_column('segment')
