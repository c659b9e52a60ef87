-- pgbench script: the write path's SQL for one debit (service/db/write.py `_append` and `_plan`,
-- write_sql.py, a batch of one), one transaction each. The same statements against the same
-- tables, so the same triggers (the hash chain) and indexes: the user's and the
-- Idempotency-Key's advisory locks (with the signature insert of LOCK_AND_SIGN, which a debit
-- gives no row), SPEND_STATE (the wallet and its live holds' sum), ANSWERS (the key's stored
-- answer, and whether its event exists), the event insert with ON CONFLICT ... RETURNING, then
-- project()'s statement for a debit: the wallet upsert and the stored answer's insert in one
-- round trip. The answer stored is built from the rows read and returned, in the shape of the
-- service's (a debit and its wallet as JSON, about the same size); the decision itself (is the
-- amount available?) is the service's Python and not run here: the wallets are funded (as
-- internal credits, by pgtools.fund) for far more than the debits take.
-- Variables from the command line: n=0 (a counter per client), users, run (distinct per
-- invocation), apikey (the spending key's name: the events' provider). The Idempotency-Key is
-- random hex ahead of run/client/counter: unique, yet spread over the indexes like real keys.
-- pgbench substitutes :name even inside quotes, hence 'idem' || ':' and 'user:' || 'user-'.
\set n :n + 1
\set uid random(0, :users - 1)
\set cents random(1, 99999)
\set r random(0, 1099511627775)
BEGIN;
WITH locked AS (
    SELECT count(pg_advisory_xact_lock(h)) AS n
    FROM (SELECT DISTINCT hashtextextended(n, 0) AS h
          FROM unnest(ARRAY[
              'idem' || ':' || :apikey::text || ':' || (lpad(to_hex(:r::bigint), 10, '0')
                  || :run::text || :client_id::text || 'n' || :n::text),
              'user:' || 'user-' || :uid::text]) AS n
          ORDER BY h) AS l
), signed AS (
    INSERT INTO signatures (provider, signature, signed, reversal)
    SELECT * FROM unnest('{}'::text[], '{}'::bytea[], '{}'::bytea[], '{}'::bool[])
    WHERE (SELECT n FROM locked) >= 0
    ON CONFLICT (provider, signature) DO NOTHING
    RETURNING provider, signature
)
SELECT provider, signature FROM signed
UNION ALL SELECT NULL, NULL FROM locked;
WITH now AS MATERIALIZED (SELECT clock_timestamp() AS t)
SELECT u.user_id, now.t AS now,
       coalesce(w.balance, 0) AS balance,
       coalesce(w.total_credited, 0) AS total_credited,
       coalesce(w.total_reversed, 0) AS total_reversed,
       coalesce(w.total_debited, 0) AS total_debited,
       coalesce(w.event_count, 0) AS event_count,
       (SELECT coalesce(sum(h.amount), 0) FROM holds AS h
        WHERE h.user_id = u.user_id AND h.status = 'held' AND h.expires_at > now.t) AS held
FROM unnest(ARRAY['user-' || :uid::text]) AS u(user_id)
CROSS JOIN now
LEFT JOIN wallets AS w ON w.user_id = u.user_id \gset st_
SELECT k.api_key, k.key, i.fingerprint, i.status, i.body,
       EXISTS (SELECT 1 FROM events AS e
               WHERE e.provider = k.api_key AND e.key = 'request:' || k.key) AS used
FROM unnest(ARRAY[:apikey::text],
            ARRAY[lpad(to_hex(:r::bigint), 10, '0') || :run::text || :client_id::text || 'n'
                  || :n::text]) AS k(api_key, key)
LEFT JOIN idempotency_keys AS i ON i.api_key = k.api_key AND i.key = k.key;
INSERT INTO events (provider, key, type, user_id, amount, provider_ref, test, data)
VALUES (:apikey::text,
        'request:' || lpad(to_hex(:r::bigint), 10, '0') || :run::text || :client_id::text
            || 'n' || :n::text,
        'debited', 'user-' || :uid::text, :cents::numeric * 0.01, '', false, '{}'::jsonb)
ON CONFLICT (provider, key) DO NOTHING
RETURNING provider, key, position, recorded_at, hash \gset ev_
WITH changed AS (
    INSERT INTO wallets AS w (user_id, balance, total_credited, total_reversed, total_debited,
                              event_count, last_position, updated_at)
    VALUES ('user-' || :uid::text, -(:cents::numeric * 0.01), 0, 0, :cents::numeric * 0.01, 1,
            :ev_position::bigint, now())
    ON CONFLICT (user_id) DO UPDATE SET
        balance = w.balance + EXCLUDED.balance,
        total_credited = w.total_credited + EXCLUDED.total_credited,
        total_reversed = w.total_reversed + EXCLUDED.total_reversed,
        total_debited = w.total_debited + EXCLUDED.total_debited,
        event_count = w.event_count + EXCLUDED.event_count,
        last_position = greatest(w.last_position, EXCLUDED.last_position),
        updated_at = now()
), answered AS (
    INSERT INTO idempotency_keys (api_key, key, fingerprint, status, body)
    VALUES (:apikey::text,
            lpad(to_hex(:r::bigint), 10, '0') || :run::text || :client_id::text || 'n'
                || :n::text,
            sha256(convert_to('debit' || :uid::text || :cents::text || :n::text, 'UTF8')), 201,
            convert_to(json_build_object(
                'debit', json_build_object(
                    'position', :ev_position::bigint, 'type', 'debited',
                    'provider', :apikey::text, 'provider_ref', '',
                    'user_id', 'user-' || :uid::text,
                    'amount', (:cents::numeric * 0.01)::text, 'test', false,
                    'recorded_at', :ev_recorded_at::timestamptz, 'data', '{}'::json,
                    'hash', encode(:ev_hash::bytea, 'hex')),
                'wallet', json_build_object(
                    'user_id', 'user-' || :uid::text,
                    'balance', (:st_balance::numeric - :cents::numeric * 0.01)::text,
                    'total_credited', :st_total_credited::numeric::text,
                    'total_reversed', :st_total_reversed::numeric::text,
                    'total_debited', (:st_total_debited::numeric + :cents::numeric * 0.01)::text,
                    'held', :st_held::numeric::text,
                    'available', (:st_balance::numeric - :st_held::numeric
                                  - :cents::numeric * 0.01)::text,
                    'event_count', :st_event_count::bigint + 1,
                    'updated_at', :ev_recorded_at::timestamptz))::text, 'UTF8'))
)
SELECT 0;
COMMIT;
