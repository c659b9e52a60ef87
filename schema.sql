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
    -- The writing transaction: the feed orders by it (see read.feed for why).
    txid          xid8        NOT NULL DEFAULT pg_current_xact_id(),
    -- Tamper evidence: each event's hash covers its contents and the hash of the previous
    -- event of the same user (events_chain below). `chain` says how `hash` was made:
    -- 0 plain sha256 (events written before the chain key existed), 1 HMAC-SHA256 with the
    -- chain key.
    prev_hash     bytea,
    hash          bytea       NOT NULL,
    chain         smallint    NOT NULL DEFAULT 0,
    -- Idempotency lives here: a retried postback cannot insert a second row.
    CONSTRAINT events_provider_key_unique UNIQUE (provider, key),
    CONSTRAINT events_type_known CHECK (type IN ('credited', 'reversed', 'receipt_status_changed',
                                                 'debited', 'hold_placed', 'hold_captured',
                                                 'hold_released')),
    CONSTRAINT events_amount_in_range CHECK (amount >= 0 AND amount < 1e15)
);

-- Upgrades a log created before these columns existed. Its older events have no hash, and
-- verify reports them as unchained: nothing vouches for them.
ALTER TABLE events ADD COLUMN IF NOT EXISTS txid xid8 NOT NULL DEFAULT pg_current_xact_id();
ALTER TABLE events ADD COLUMN IF NOT EXISTS prev_hash bytea;
ALTER TABLE events ADD COLUMN IF NOT EXISTS hash bytea;
-- Events written before the chain key existed keep their plain sha256 (chain 0) and still verify.
ALTER TABLE events ADD COLUMN IF NOT EXISTS chain smallint NOT NULL DEFAULT 0;

-- Upgrades a log created before spending existed: its check constraint knew three event types.
-- The new one is NOT VALID, so adding it scans nothing (every older row has an older type);
-- it still holds for every row written from now on.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_constraint
                   WHERE conrelid = 'events'::regclass AND conname = 'events_type_known'
                     AND pg_get_constraintdef(oid) LIKE '%hold_released%') THEN
        ALTER TABLE events DROP CONSTRAINT IF EXISTS events_type_known;
        ALTER TABLE events ADD CONSTRAINT events_type_known CHECK (type IN (
            'credited', 'reversed', 'receipt_status_changed',
            'debited', 'hold_placed', 'hold_captured', 'hold_released')) NOT VALID;
    END IF;
END;
$$;

CREATE INDEX IF NOT EXISTS events_user_position ON events (user_id, position);
CREATE INDEX IF NOT EXISTS events_feed ON events (txid, position);

-- The hashed form of an event: the previous hash of its user, then a JSON array of every
-- field, so no separator can be moved between two fields to make different events hash alike.
-- jsonb keeps a numeric's scale ("10.50" stays 10.50) and prints the same value the same way
-- every time. `verify` rebuilds these bytes itself (service/domain/chain.py) rather than trust
-- this function, which the table's owner could replace.
CREATE OR REPLACE FUNCTION event_message(prev bytea, e events) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT coalesce(prev, ''::bytea) || convert_to(jsonb_build_array(
        e.position, e.provider, e.key, e.type, e.user_id, e.amount, e.provider_ref, e.test,
        e.data, to_char(e.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )::text, 'UTF8')
$$;

-- Chain 0, the unkeyed hash of events written before the chain key existed.
CREATE OR REPLACE FUNCTION event_hash(prev bytea, e events) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT sha256(event_message(prev, e))
$$;

-- Chain 1: HMAC-SHA256 with the chain key, from two sha256 calls (no extension needed).
-- `pads` is the hex of the key's inner then outer HMAC pad (64 bytes each), which the service
-- sends as the session setting ledger.chain_pads when it connects; the key is never stored.
CREATE OR REPLACE FUNCTION event_hmac(prev bytea, e events, pads text) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT sha256(decode(substr(pads, 129, 128), 'hex')
                  || sha256(decode(substr(pads, 1, 128), 'hex') || event_message(prev, e)))
$$;

-- Chains each new event to the previous event of its user, keyed. The write path holds the
-- user's lock while it inserts, so "previous" cannot change underneath; rows inserted earlier
-- by the same statement are visible here, and rows that ON CONFLICT skips are never chained.
-- A connection without the chain key cannot insert. `txid` is always the writing transaction,
-- so no insert can place itself before a checkpoint's boundary.
CREATE OR REPLACE FUNCTION events_chain() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pads text := current_setting('ledger.chain_pads', true);
BEGIN
    IF pads IS NULL OR length(pads) <> 256 THEN
        RAISE EXCEPTION 'events: this connection has no chain key (session setting ledger.chain_pads)'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    NEW.txid := pg_current_xact_id();
    SELECT hash INTO NEW.prev_hash FROM events
    WHERE user_id = NEW.user_id ORDER BY position DESC LIMIT 1;
    NEW.chain := 1;
    NEW.hash := event_hmac(NEW.prev_hash, NEW, pads);
    RETURN NEW;
END;
$$;

CREATE OR REPLACE TRIGGER events_chain
    BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_chain();

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
    total_debited   numeric     NOT NULL DEFAULT 0,
    event_count     bigint      NOT NULL DEFAULT 0,
    last_position   bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Debits and captured holds, since spending began (balance = credited - reversed - debited).
ALTER TABLE wallets ADD COLUMN IF NOT EXISTS total_debited numeric NOT NULL DEFAULT 0;

-- Wallets a chargeback took below zero after their user spent: finance's exposure, read by the
-- negative-balance gauge without a scan of every wallet.
CREATE INDEX IF NOT EXISTS wallets_negative ON wallets (user_id) WHERE balance < 0;

-- Projection: holds (domain/holds.py), one row per hold, updated in the same transaction as its
-- events. A hold counts in its wallet's `held` while `status` is 'held' and `expires_at` is in
-- the future: readers compare with their own clock, so an expired hold stops counting at
-- `expires_at` exactly, before its release event is written.
CREATE TABLE IF NOT EXISTS holds (
    hold_id        text        PRIMARY KEY,
    owner          text        NOT NULL,
    user_id        text        NOT NULL,
    amount         numeric     NOT NULL,
    status         text        NOT NULL,
    captured       numeric     NOT NULL DEFAULT 0,
    released       numeric     NOT NULL DEFAULT 0,
    expires_at     timestamptz NOT NULL,
    reference      text,
    last_position  bigint      NOT NULL DEFAULT 0,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT holds_status_known CHECK (status IN ('held', 'captured', 'voided', 'expired'))
);

CREATE INDEX IF NOT EXISTS holds_live_user ON holds (user_id) WHERE status = 'held';
CREATE INDEX IF NOT EXISTS holds_live_expiry ON holds (expires_at) WHERE status = 'held';

-- The first answer to each spending request's Idempotency-Key (scoped to its API key), given
-- again, byte for byte, to every repeat of the same request. Not the ledger: rows older than
-- `spend.idempotency_days` are deleted. After that the key's event still exists, and its
-- unique key still refuses a second effect.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    api_key      text        NOT NULL,
    key          text        NOT NULL,
    fingerprint  bytea       NOT NULL,
    status       smallint    NOT NULL,
    body         bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (api_key, key)
);

CREATE INDEX IF NOT EXISTS idempotency_keys_created ON idempotency_keys (created_at);

-- What arrived and how it was answered, refused postbacks included. Parameters are stored
-- with signatures and tokens removed. Not the ledger: it is kept `postback_log.retention_days`.
-- Partitioned by range of received_at, one partition per UTC day (postback_log_YYYYMMDD), so
-- that expiry drops whole days (postback_log_expire below) instead of deleting rows, and a read
-- given since/until opens only the days it covers. A day is the unit because retention is set
-- in days and pages are read newest first: ~90 partitions at the default retention, each small
-- enough to drop at once, few enough for the planner. `id` comes from the identity sequence
-- and is unique on its own: each partition has a primary key on it (a key of the whole table
-- would have to include received_at), which is what a lookup by id reads, one probe per
-- partition.
CREATE TABLE IF NOT EXISTS postback_log (
    id              bigint GENERATED ALWAYS AS IDENTITY,
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
) PARTITION BY RANGE (received_at);

-- Who and what a postback was about, read from its parameters by the wall's field names even
-- when it was refused (a bad signature still names its user), so that support finds every
-- postback of a user or of a transaction; NULL when the request did not say. `reason`: why
-- authentication failed (signature, token, source_ip, replay) for a rejected postback.
ALTER TABLE postback_log ADD COLUMN IF NOT EXISTS user_id text;
ALTER TABLE postback_log ADD COLUMN IF NOT EXISTS transaction text;
ALTER TABLE postback_log ADD COLUMN IF NOT EXISTS reason text;

-- The log is read newest first by (received_at, id), whichever filter is given: each index
-- below serves one filter, in that order, so a page is one short index scan on any log size.
-- The index by time alone is partial on `id > 0` (true of every row), a condition only a read
-- without an equality filter states (read.postbacks_query): a read of one wall is then never
-- planned as a walk down the time index discarding other walls' rows, which for a wall that
-- has gone quiet would read everything since its last postback.
DROP INDEX IF EXISTS postback_log_provider_id;
DROP INDEX IF EXISTS postback_log_outcome_id;
DROP INDEX IF EXISTS postback_log_time;
CREATE INDEX IF NOT EXISTS postback_log_recent ON postback_log (received_at, id) WHERE id > 0;
CREATE INDEX IF NOT EXISTS postback_log_provider ON postback_log (provider, received_at, id);
CREATE INDEX IF NOT EXISTS postback_log_outcome ON postback_log (outcome, received_at, id);
CREATE INDEX IF NOT EXISTS postback_log_user ON postback_log (user_id, received_at, id);
CREATE INDEX IF NOT EXISTS postback_log_transaction
    ON postback_log (transaction, received_at, id);

-- A log written before the log was partitioned: an ordinary table, converted in place without
-- copying its rows. It becomes the partition postback_log_legacy, covering everything before
-- the UTC midnight after its newest row (the days from then on get partitions of their own),
-- and is dropped whole by retention once that midnight is older than retention_days.
-- Locking: this runs inside migrate's transaction. ACCESS EXCLUSIVE on the old table is taken
-- first, so a service of the previous release still writing waits (its inserts resume, into the
-- partitioned table of the same name, when migrate commits) rather than inserting behind the
-- cut-over. What happens under that lock: one read of the old table to prove the CHECK
-- constraint that lets ATTACH skip its own scan (a sequential read: about a second per few
-- million rows, see the README), then catalog changes only: no row is copied and no index is
-- built, since the old table's indexes are those of the new one and are attached as they are.
-- Its identity sequence goes with its identity; the new table's ids continue after the old ones.
DO $$
DECLARE
    cut timestamptz;
    next_id bigint;
    seq text;
    ix record;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'postback_log'::regclass) <> 'r' THEN
        RETURN;
    END IF;
    LOCK TABLE postback_log IN ACCESS EXCLUSIVE MODE;
    SELECT date_trunc('day', greatest(now(), max(received_at)), 'UTC') + interval '24 hours'
    INTO cut FROM postback_log WHERE id > 0;
    seq := pg_get_serial_sequence('postback_log', 'id');
    EXECUTE format('SELECT greatest(last_value, (SELECT max(id) FROM postback_log)) + 1 FROM %s',
                   seq) INTO next_id;
    EXECUTE format('ALTER TABLE postback_log ADD CONSTRAINT postback_log_legacy_range'
                   ' CHECK (received_at < %L)', cut);
    ALTER TABLE postback_log ALTER COLUMN id DROP IDENTITY;
    ALTER TABLE postback_log RENAME TO postback_log_legacy;
    CREATE TABLE postback_log (LIKE postback_log_legacy INCLUDING DEFAULTS)
        PARTITION BY RANGE (received_at);
    EXECUTE format('ALTER TABLE postback_log ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY'
                   ' (START WITH %s)', next_id);
    EXECUTE format('ALTER TABLE postback_log ATTACH PARTITION postback_log_legacy'
                   ' FOR VALUES FROM (MINVALUE) TO (%L)', cut);
    -- Each index of the old table becomes <its name>_legacy, and the same index is made on the
    -- new table under the old name: ATTACH finds the old one matching, and builds nothing.
    FOR ix IN SELECT c.relname, i.indisprimary, pg_get_indexdef(i.indexrelid) AS def
              FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
              WHERE i.indrelid = 'postback_log_legacy'::regclass ORDER BY c.relname LOOP
        IF ix.indisprimary THEN
            EXECUTE format('ALTER INDEX %I RENAME TO postback_log_pkey_legacy', ix.relname);
        ELSE
            EXECUTE format('ALTER INDEX %I RENAME TO %I', ix.relname, ix.relname || '_legacy');
            EXECUTE format('CREATE INDEX %I ON postback_log %s', ix.relname,
                           substring(ix.def FROM ' USING .*'));
        END IF;
    END LOOP;
END;
$$;

-- The partitions, each with its UTC range (MINVALUE for the converted log's), whether it is the
-- default partition, and about how many rows it holds (from the statistics): how to look at
-- them is `SELECT * FROM postback_log_partitions()`.
CREATE OR REPLACE FUNCTION postback_log_partitions(parent text DEFAULT 'postback_log')
RETURNS TABLE (partition regclass, range_from timestamptz, range_to timestamptz,
               is_default boolean, approx_rows bigint)
LANGUAGE sql STABLE AS $$
    SELECT c.oid::regclass,
           CASE WHEN b.m[1] = 'MINVALUE' THEN '-infinity' ELSE trim(b.m[1], '''') END::timestamptz,
           CASE WHEN b.m[2] = 'MAXVALUE' THEN 'infinity' ELSE trim(b.m[2], '''') END::timestamptz,
           b.m IS NULL,
           greatest(c.reltuples, 0)::bigint
    FROM pg_inherits AS i
    JOIN pg_class AS c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid),
                                            '^FOR VALUES FROM \((.*)\) TO \((.*)\)$') AS m) AS b
    WHERE i.inhparent = parent::regclass
    ORDER BY 3, 2
$$;

-- Makes the partitions of the UTC days first_day to last_day that are missing, and the default
-- partition, which takes any row no day's partition covers (the upkeep fell behind, or a time
-- far off), so that an insert never fails for want of a partition. A row in the default
-- partition is moved into its day's partition when that is made, and deleted by expiry once
-- older than retention. Every service process calls this at start-up and hourly (for today and
-- the next days), migrate at each run: one at a time, by the advisory lock, and each making only
-- what is missing. A partition is made as a table of its own, given the parent's indexes under
-- names of its own (<parent's index>_<day>) and a primary key on id, then attached: ATTACH
-- needs only SHARE UPDATE EXCLUSIVE on postback_log, which neither reads nor inserts conflict
-- with (and a short ACCESS EXCLUSIVE on the default partition, whose rows it checks).
-- SECURITY DEFINER: the runtime role may call it (roles.py), and it acts as the tables' owner,
-- on postback_log's partitions only; names are schema-qualified, so no temporary table of the
-- caller stands in for one of them.
CREATE OR REPLACE FUNCTION postback_log_prepare(first_day date, last_day date)
RETURNS TABLE (partition text, moved bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    here text := current_schema();
    parent text := format('%I.postback_log', current_schema());
    columns text;
    deflt text;
    day date;
    suffix text;
    bound text;
    lo timestamptz;
    hi timestamptz;
    ix record;
BEGIN
    IF last_day - first_day > 400 THEN
        RAISE EXCEPTION 'postback_log_prepare: at most 400 days at once';
    END IF;
    PERFORM pg_advisory_xact_lock(380475);  -- 0x5CE3B, one maintenance at a time
    SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) INTO columns
    FROM pg_attribute WHERE attrelid = parent::regclass AND attnum > 0 AND NOT attisdropped;
    SELECT p.partition::text INTO deflt FROM postback_log_partitions(parent) AS p
    WHERE p.is_default;
    FOR day IN SELECT d::date FROM generate_series(first_day, last_day, interval '1 day') AS d
    LOOP
        lo := day::timestamp AT TIME ZONE 'UTC';
        hi := (day + 1)::timestamp AT TIME ZONE 'UTC';
        CONTINUE WHEN EXISTS (SELECT 1 FROM postback_log_partitions(parent) AS p
                              WHERE NOT p.is_default AND p.range_from < hi AND p.range_to > lo);
        suffix := to_char(day, 'YYYYMMDD');
        partition := 'postback_log_' || suffix;
        bound := format('FOR VALUES FROM (%L) TO (%L)', lo, hi);
        moved := 0;
        EXECUTE format('CREATE TABLE %I.%I (LIKE %s)', here, partition, parent);
        -- Rows of this day that went to the default partition while this one was missing.
        IF deflt IS NOT NULL THEN
            EXECUTE format('WITH m AS (DELETE FROM %s WHERE received_at >= $1 AND received_at < $2'
                           ' RETURNING %s) INSERT INTO %I.%I (%s) SELECT %s FROM m',
                           deflt, columns, here, partition, columns, columns) USING lo, hi;
            GET DIAGNOSTICS moved = ROW_COUNT;
        END IF;
        FOR ix IN SELECT c.relname, pg_get_indexdef(i.indexrelid) AS def
                  FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                  WHERE i.indrelid = parent::regclass LOOP
            EXECUTE format('CREATE INDEX %I ON %I.%I %s', ix.relname || '_' || suffix, here,
                           partition, substring(ix.def FROM ' USING .*'));
        END LOOP;
        EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT %I PRIMARY KEY (id)', here, partition,
                       'postback_log_pkey_' || suffix);
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I %s', parent, here, partition, bound);
        RETURN NEXT;
    END LOOP;
    IF deflt IS NULL THEN
        partition := 'postback_log_default';
        moved := 0;
        EXECUTE format('CREATE TABLE %I.%I (LIKE %s)', here, partition, parent);
        FOR ix IN SELECT c.relname, pg_get_indexdef(i.indexrelid) AS def
                  FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
                  WHERE i.indrelid = parent::regclass LOOP
            EXECUTE format('CREATE INDEX %I ON %I.%I %s', ix.relname || '_default', here,
                           partition, substring(ix.def FROM ' USING .*'));
        END LOOP;
        EXECUTE format('ALTER TABLE %I.%I ADD CONSTRAINT postback_log_pkey_default'
                       ' PRIMARY KEY (id)', here, partition);
        EXECUTE format('ALTER TABLE %s ATTACH PARTITION %I.%I DEFAULT', parent, here, partition);
        RETURN NEXT;
    END IF;
END;
$$;

-- Drops every partition whose whole range is older than `retention_days` (from 1 to 3650),
-- and deletes the rows of the default partition that are: a row is kept at least that long,
-- and at most a day more. Answers each partition dropped with about how many rows it held
-- (the default partition's with the rows deleted). Dropping a partition takes ACCESS EXCLUSIVE
-- on postback_log for an instant: it waits at most lock_timeout for the reads and inserts under
-- way (then fails, and the next pass tries again), rather than queue every new one behind it.
-- SECURITY DEFINER like postback_log_prepare. The runtime role can already rewrite any row of
-- the log (it is not the ledger, and carries no tamper evidence), so letting it expire old days
-- gives it nothing new; it gains no right over any other table.
CREATE OR REPLACE FUNCTION postback_log_expire(retention_days integer)
RETURNS TABLE (partition text, approx_rows bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT SET lock_timeout = '5s' AS $$
DECLARE
    here text := current_schema();
    parent text := format('%I.postback_log', current_schema());
    cutoff timestamptz;
    p record;
BEGIN
    IF retention_days IS NULL OR retention_days NOT BETWEEN 1 AND 3650 THEN
        RAISE EXCEPTION 'postback_log_expire: retention_days must be from 1 to 3650';
    END IF;
    PERFORM pg_advisory_xact_lock(380475);  -- 0x5CE3B, one maintenance at a time
    cutoff := now() - make_interval(hours => 24 * retention_days);
    FOR p IN SELECT * FROM postback_log_partitions(parent) AS l
             WHERE NOT l.is_default AND l.range_to <= cutoff LOOP
        SELECT c.relname INTO partition FROM pg_class AS c WHERE c.oid = p.partition;
        approx_rows := p.approx_rows;
        EXECUTE format('DROP TABLE %I.%I', here, partition);
        RETURN NEXT;
    END LOOP;
    FOR p IN SELECT * FROM postback_log_partitions(parent) AS l WHERE l.is_default LOOP
        SELECT c.relname INTO partition FROM pg_class AS c WHERE c.oid = p.partition;
        EXECUTE format('DELETE FROM %I.%I WHERE received_at < $1', here, partition)
            USING cutoff;
        GET DIAGNOSTICS approx_rows = ROW_COUNT;
        IF approx_rows > 0 THEN
            RETURN NEXT;
        END IF;
    END LOOP;
END;
$$;

REVOKE EXECUTE ON FUNCTION postback_log_prepare(date, date) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION postback_log_expire(integer) FROM PUBLIC;

-- Today's partition and the next days', and the default partition.
SELECT count(*) FROM postback_log_prepare((now() AT TIME ZONE 'UTC')::date,
                                          (now() AT TIME ZONE 'UTC')::date + 3);

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

-- One signature authenticates one postback. Walls sign a plain concatenation of some fields, so
-- characters moved across a field boundary keep a signature valid; the write path refuses a
-- signature already seen with other values of the fields it signs. Only digests are kept: of
-- the signature (lowercase) and of the signed values. `reversal`: it was first seen on a
-- reversal, so it cannot then authenticate a credit (a captured chargeback URL with its status
-- flipped). Kept for good: a row is under 100 bytes beside an event of several hundred, and a
-- wall may resend (or a chargeback reuse) a signature months later.
CREATE TABLE IF NOT EXISTS signatures (
    provider    text        NOT NULL,
    signature   bytea       NOT NULL,
    signed      bytea       NOT NULL,
    reversal    boolean     NOT NULL DEFAULT false,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, signature)
);

-- Projection: each wall transaction's credit and reversal (domain/settlement.py), so that a
-- reversal takes back at most what its credit gave, from the same user, once. The link is the
-- wall's transaction id (provider_ref), or the one a reversal was linked to by its click
-- (data.link). `click`: the credit's click id (Medioot's uuid), or a lone reversal's until its
-- credit arrives, by which a reversal sent under a transaction id of its own finds its credit
-- and a credit finds a reversal that came first. `reversal_whole`: the reversal takes back the
-- whole credit, whatever amount it names (a wall that does not sign the amount).
CREATE TABLE IF NOT EXISTS settlements (
    provider        text        NOT NULL,
    link            text        NOT NULL,
    click           text,
    credit_key      text,
    credit_user     text        NOT NULL DEFAULT '',
    credited        numeric     NOT NULL DEFAULT 0,
    reversal_key    text,
    reversal_user   text        NOT NULL DEFAULT '',
    reversed        numeric     NOT NULL DEFAULT 0,
    reversal_whole  boolean     NOT NULL DEFAULT false,
    last_position   bigint      NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, link)
);

CREATE INDEX IF NOT EXISTS settlements_click ON settlements (provider, click)
    WHERE click IS NOT NULL;

-- A log written before settlements existed: pair its credits and reversals once, the first of
-- each per transaction (the write path now refuses a second one), so that a chargeback arriving
-- after the upgrade finds its credit. Runs only while the projection is empty and the log has
-- credits or reversals, that is once.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM settlements)
       AND EXISTS (SELECT 1 FROM events WHERE type IN ('credited', 'reversed') AND NOT test) THEN
        INSERT INTO settlements (provider, link, click, credit_key, credit_user, credited,
                                 reversal_key, reversal_user, reversed, last_position)
        SELECT provider, link,
               (array_agg(data->>'uuid' ORDER BY position) FILTER (WHERE type = 'credited'))[1],
               (array_agg(key ORDER BY position) FILTER (WHERE type = 'credited'))[1],
               coalesce((array_agg(user_id ORDER BY position)
                         FILTER (WHERE type = 'credited'))[1], ''),
               coalesce((array_agg(amount ORDER BY position)
                         FILTER (WHERE type = 'credited'))[1], 0),
               (array_agg(key ORDER BY position) FILTER (WHERE type = 'reversed'))[1],
               coalesce((array_agg(user_id ORDER BY position)
                         FILTER (WHERE type = 'reversed'))[1], ''),
               coalesce((array_agg(amount ORDER BY position)
                         FILTER (WHERE type = 'reversed'))[1], 0),
               max(position)
        FROM (SELECT *, coalesce(data->>'link', provider_ref) AS link
              FROM events WHERE type IN ('credited', 'reversed') AND NOT test) AS e
        GROUP BY provider, link;
    END IF;
END;
$$;

-- Upgrades that must run exactly once, by name: each runs only while its name is absent here,
-- then records it. On a fresh database there is nothing to upgrade, and it is only recorded.
CREATE TABLE IF NOT EXISTS schema_upgrades (
    name        text        PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- A log written before an AdGate approval's `state` was read: each APPROVED receipt event
-- (without data.conversion_state) credited its points on its own. Each becomes part of its
-- conversion (domain/settlement.py): by conversion_id, or the event itself without one; the
-- first names the credit and the conversion's credit is the sum of their points, as they were
-- credited, so that a rejection arriving after the upgrade takes it back.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM schema_upgrades WHERE name = 'receipt_conversions') THEN
        INSERT INTO settlements (provider, link, credit_key, credit_user, credited, last_position)
        SELECT provider, link,
               (array_agg(key ORDER BY position))[1],
               (array_agg(user_id ORDER BY position))[1],
               sum(amount),
               max(position)
        FROM (SELECT *, coalesce('conversion:' || nullif(data->>'conversion_id', ''), key) AS link
              FROM events
              WHERE type = 'receipt_status_changed' AND data->>'status' = 'APPROVED'
                AND NOT test AND NOT data ? 'conversion_state') AS e
        GROUP BY provider, link;
        INSERT INTO schema_upgrades (name) VALUES ('receipt_conversions');
    END IF;
END;
$$;

-- Operator page sessions that were signed out before they expired (web/session.py): a session
-- cookie is signed and carries its own expiry, so only an early end needs remembering, until
-- the cookie would have expired anyway (the upkeep loop deletes the row then).
CREATE TABLE IF NOT EXISTS operator_sessions_ended (
    session_id  text        PRIMARY KEY,
    expires_at  timestamptz NOT NULL
);
