-- pgbench script: the write path's SQL for one new Medioot credit (service/db/write.py and write_sql.py, a batch
-- of one), one transaction each. The same statements against the same tables, so the same
-- triggers (the hash chain) and indexes: the user's and the transaction's advisory locks with
-- the signature digest, the transaction's settlement looked up, the event insert with
-- ON CONFLICT ... RETURNING, then the settlement, the wallet and the postback log row.
-- Not the feed's pg_notify: a transaction that notifies holds a database-wide lock from its
-- pre-commit until its commit is flushed, so notifying transactions commit one at a time (no
-- group commit). That is the service's cost to amortise by batching, not the database's
-- capacity for this work; `bench.py --pgbench-notify` adds it (see PGBENCH_NOTIFY).
-- Variables from the command line: n=0 (a counter per client), users, run (distinct per
-- invocation). The transid is random hex ahead of run/client/counter: unique, yet spread over
-- the unique index like real transids.
-- pgbench substitutes :name even inside quotes, hence 'user:' || 'user-'.
\set n :n + 1
\set uid random(0, :users - 1)
\set cents random(1, 99999)
\set r random(0, 1099511627775)
BEGIN;
WITH locked AS (
    SELECT count(pg_advisory_xact_lock(h)) AS n
    FROM (SELECT DISTINCT hashtextextended(n, 0) AS h
          FROM unnest(ARRAY[
              'link' || ':' || 'medioot' || ':' || (lpad(to_hex(:r::bigint), 10, '0')
                  || :run::text || :client_id::text || 'n' || :n::text),
              'user:' || 'user-' || :uid::text]) AS n
          ORDER BY h) AS l
), signed AS (
    INSERT INTO signatures (provider, signature, signed)
    SELECT 'medioot', sha256(convert_to('sig' || (lpad(to_hex(:r::bigint), 10, '0') || :run::text || :client_id::text || 'n' || :n::text), 'UTF8')),
           sha256(convert_to('values' || (lpad(to_hex(:r::bigint), 10, '0') || :run::text || :client_id::text || 'n' || :n::text), 'UTF8'))
    WHERE (SELECT n FROM locked) >= 0
    ON CONFLICT (provider, signature) DO NOTHING
    RETURNING provider, signature
)
SELECT provider, signature FROM signed
UNION ALL SELECT NULL, NULL FROM locked;
SELECT provider, link, credit_key, credit_user, credited, reversal_key, reversal_user, reversed
FROM settlements WHERE provider = 'medioot' AND link = (lpad(to_hex(:r::bigint), 10, '0') || :run::text || :client_id::text || 'n' || :n::text);
INSERT INTO events (provider, key, type, user_id, amount, provider_ref, test, data)
VALUES ('medioot',
        'credit:' || lpad(to_hex(:r::bigint), 10, '0') || :run::text || :client_id::text
            || 'n' || :n::text,
        'credited', 'user-' || :uid::text, :cents::numeric * 0.01,
        lpad(to_hex(:r::bigint), 10, '0') || :run::text || :client_id::text || 'n' || :n::text,
        false, '{}'::jsonb)
ON CONFLICT (provider, key) DO NOTHING
RETURNING position \gset
INSERT INTO settlements (provider, link, credit_key, credit_user, credited, reversal_key,
                         reversal_user, reversed, last_position, updated_at)
VALUES ('medioot', (lpad(to_hex(:r::bigint), 10, '0') || :run::text || :client_id::text || 'n' || :n::text), 'credit:' || (lpad(to_hex(:r::bigint), 10, '0') || :run::text || :client_id::text || 'n' || :n::text), 'user-' || :uid::text,
        :cents::numeric * 0.01, NULL, '', 0, :position::bigint, now())
ON CONFLICT (provider, link) DO UPDATE SET
    credit_key = EXCLUDED.credit_key,
    credit_user = EXCLUDED.credit_user,
    credited = EXCLUDED.credited,
    last_position = EXCLUDED.last_position,
    updated_at = now();
INSERT INTO wallets AS w (user_id, balance, total_credited, total_reversed, event_count,
                          last_position, updated_at)
VALUES ('user-' || :uid::text, :cents::numeric * 0.01, :cents::numeric * 0.01, 0, 1,
        :position::bigint, now())
ON CONFLICT (user_id) DO UPDATE SET
    balance = w.balance + EXCLUDED.balance,
    total_credited = w.total_credited + EXCLUDED.total_credited,
    total_reversed = w.total_reversed + EXCLUDED.total_reversed,
    event_count = w.event_count + EXCLUDED.event_count,
    last_position = greatest(w.last_position, EXCLUDED.last_position),
    updated_at = now();
INSERT INTO postback_log (request_id, provider, outcome, http_status, detail, client_ip, method,
                          params, event_position)
VALUES (md5(:r::text || :client_id::text || :n::text), 'medioot', 'credited', 200,
        'recorded as event ' || :position::text, '127.0.0.1', 'GET',
        jsonb_build_object(
            'subid', 'user-' || :uid::text,
            'transid', lpad(to_hex(:r::bigint), 10, '0') || :run::text || :client_id::text
                || 'n' || :n::text,
            'reward', (:cents::numeric * 0.01)::text,
            'status', '1'),
        :position::bigint);
COMMIT;
