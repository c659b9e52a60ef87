-- The postback ledger's schema. Applied at every start and by `python -m service migrate`:
-- every statement here must be safe to run again on a database that already has it.

-- The event log: append-only. Amounts are numeric, never floating point; `amount` is the
-- absolute value the wall sent and `type` says which way it moves the balance.
CREATE TABLE IF NOT EXISTS events (
    position      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider      text        NOT NULL,
    key           text        NOT NULL,
    type          text        NOT NULL,
    user_id       text        NOT NULL,
    amount        numeric     NOT NULL,
    provider_ref  text        NOT NULL,
    test          boolean     NOT NULL DEFAULT false,
    data          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    -- Idempotency lives here: a retried postback cannot insert a second row.
    CONSTRAINT events_provider_key_unique UNIQUE (provider, key),
    CONSTRAINT events_type_known CHECK (type IN ('credited', 'reversed', 'receipt_status_changed')),
    CONSTRAINT events_amount_in_range CHECK (amount >= 0 AND amount < 1e15)
);

CREATE INDEX IF NOT EXISTS events_user_position ON events (user_id, position);

CREATE OR REPLACE FUNCTION events_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE OR REPLACE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();

CREATE OR REPLACE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- Projection: one row per user, updated in the same transaction as the events it folds in.
CREATE TABLE IF NOT EXISTS wallets (
    user_id         text        PRIMARY KEY,
    balance         numeric     NOT NULL DEFAULT 0,
    total_credited  numeric     NOT NULL DEFAULT 0,
    total_reversed  numeric     NOT NULL DEFAULT 0,
    event_count     bigint      NOT NULL DEFAULT 0,
    last_position   bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- What arrived and how it was answered, refused postbacks included. Parameters are stored
-- with signatures and tokens removed.
CREATE TABLE IF NOT EXISTS postback_log (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at     timestamptz NOT NULL DEFAULT now(),
    request_id      text        NOT NULL,
    provider        text        NOT NULL,
    outcome         text        NOT NULL,
    http_status     smallint    NOT NULL,
    detail          text        NOT NULL DEFAULT '',
    client_ip       text,
    method          text        NOT NULL,
    params          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    event_position  bigint
);

CREATE INDEX IF NOT EXISTS postback_log_provider_id ON postback_log (provider, id);
CREATE INDEX IF NOT EXISTS postback_log_outcome_id ON postback_log (outcome, id);

-- Projection: the receipt-offer state machine (AdGate Magic Receipts), one row per upload offer,
-- updated in the same transaction as its events. APPROVED is final.
CREATE TABLE IF NOT EXISTS receipt_offers (
    provider         text        NOT NULL,
    upload_offer_id  text        NOT NULL,
    upload_id        text        NOT NULL DEFAULT '',
    offer_id         text        NOT NULL DEFAULT '',
    user_id          text        NOT NULL,
    status           text        NOT NULL,
    points_credited  numeric     NOT NULL DEFAULT 0,
    approvals        integer     NOT NULL DEFAULT 0,
    event_count      bigint      NOT NULL DEFAULT 0,
    last_position    bigint      NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, upload_offer_id),
    CONSTRAINT receipt_offers_status_known
        CHECK (status IN ('MANUAL_REVIEW', 'AWARD_PENDING', 'APPROVED', 'REJECTED'))
);

-- A receipt offer's history, for the API and for verify.
CREATE INDEX IF NOT EXISTS events_receipt_offer
    ON events (provider, (data->>'upload_offer_id'), position)
    WHERE type = 'receipt_status_changed';
