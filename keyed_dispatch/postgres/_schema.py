"""The database side: versioned migrations and the SQL functions.

Every rule that keeps order and exclusion lives here, in the database, so it
holds whatever the workers do and however many there are:

* Admission. ``submit()`` takes a transaction-scoped advisory lock per key,
  in one global order (sorted hash), before it draws the job id. Two
  submissions sharing a key are serialized by that lock, so on every key the
  id order is the commit order, and it is one total order for all keys (two
  phase locking), which is what makes multi-key jobs deadlock-free: a job
  only ever waits for jobs with smaller ids.
* Queues. ``job_keys`` holds one row per (key, unfinished job). The head of
  a key is its smallest job id. ``jobs.blockers`` counts the keys on which a
  job is not the head; it is set at admission and decremented when a head is
  retired, under the same key locks, so the counter and the rows agree.
* Claim. ``claim()`` picks the oldest jobs with ``blockers = 0`` with
  ``FOR UPDATE SKIP LOCKED`` and re-checks, from the rows themselves, that
  each is the head of all its keys. Marking a job running sets ``running``
  on its ``job_keys`` rows, and a partial unique index allows one running row
  per key: two jobs sharing a key cannot be running at once even if a worker
  misbehaves. A CHECK forbids a running job with blockers.
* Fencing. A claim increments ``attempt``; ``finish()`` and ``heartbeat()``
  name the attempt and change nothing when it is not the current one, so a
  worker that lost its lease cannot record a stale result.
* Failover. ``recover()`` puts running jobs whose lease expired back in the
  queue. They are still the heads of their keys (their ``job_keys`` rows
  stay), so they run again before any later job of those keys. A start
  deadline applies to the first start only (``claim()`` clears it), so such
  a job runs again rather than expiring.
* Retries. ``fail()`` records a failed attempt: when the job's retry
  policy (stored with it) retries the error, the job goes back to
  ``queued`` with a ``not_before`` time and keeps its ``job_keys`` rows, so
  it still heads its keys; ``claim()`` skips it until then. Otherwise the
  job fails and, having a policy, leaves a row in ``dead_letters``.
* Supersede and pauses. ``submit()`` retires the superseded jobs under the
  key locks it holds (their keys are a subset of its own). ``claim()``
  skips jobs on a key in ``paused_keys`` and checks again with a new
  snapshot after locking its picks; ``pause()`` takes the key's lock and
  then waits for claims holding the key's queued jobs, so once it returns
  no claim can start one.
* Rights. The functions run with their owner's rights (SECURITY DEFINER,
  with a fixed ``search_path``) and EXECUTE is revoked from PUBLIC: a role
  needs EXECUTE on the functions it calls, and no right on the tables to
  change them (the grants are in the package docs).

Advisory locks are always taken all at once per transaction in sorted order,
and row locks only after them (ascending ids), so these functions cannot
deadlock with each other.
"""

from __future__ import annotations

import re
import zlib

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "check_schema_name", "lock_class", "migrations"]

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}\Z")


def check_schema_name(schema: str) -> str:
    """Return ``schema`` if it is a plain lower-case identifier, else raise ValueError.

    The name is spliced into SQL and into channel names, so only
    ``[a-z_][a-z0-9_]*`` (at most 40 characters) is accepted.
    """
    if not isinstance(schema, str) or not _SCHEMA_NAME.match(schema):
        raise ValueError(f"schema must match [a-z_][a-z0-9_]* (at most 40 characters), got {schema!r}")
    return schema


def lock_class(schema: str) -> int:
    """The first key of the two-int advisory locks this schema takes.

    Derived from the schema name so two schemas (or an application's own
    advisory locks, which mostly use the one-bigint form) do not collide.
    """
    return zlib.crc32(schema.encode()) & 0x7FFFFFFF


# Version 1: the queue. ``{s}`` is the schema, ``{lock}`` the lock class.
_V1 = """
CREATE TABLE {s}.jobs (
    id            bigserial PRIMARY KEY,
    token         uuid NOT NULL UNIQUE,
    keys          text[] NOT NULL,
    func          text NOT NULL,
    args          jsonb NOT NULL,
    kwargs        jsonb NOT NULL,
    state         text NOT NULL DEFAULT 'queued' CHECK (state IN
                      ('queued', 'running', 'completed', 'failed', 'expired', 'cancelled')),
    blockers      integer NOT NULL CHECK (blockers >= 0),
    attempt       integer NOT NULL DEFAULT 0,
    worker        text,
    lease_until   timestamptz,
    submitted_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    deadline      timestamptz,
    started_at    timestamptz,
    finished_at   timestamptz,
    result        jsonb,
    error_type    text,
    error_message text,
    CHECK (state <> 'running' OR blockers = 0)
);
CREATE INDEX jobs_ready ON {s}.jobs (id) WHERE state = 'queued' AND blockers = 0;
CREATE INDEX jobs_queued ON {s}.jobs (submitted_at) WHERE state = 'queued';
CREATE INDEX jobs_leases ON {s}.jobs (lease_until) WHERE state = 'running';
CREATE INDEX jobs_deadlines ON {s}.jobs (deadline) WHERE state = 'queued' AND deadline IS NOT NULL;
CREATE INDEX jobs_finished ON {s}.jobs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE {s}.job_keys (
    key     text NOT NULL,
    job_id  bigint NOT NULL REFERENCES {s}.jobs (id) ON DELETE CASCADE,
    running boolean NOT NULL DEFAULT false,
    PRIMARY KEY (key, job_id)
);
-- The cluster-wide exclusion: at most one running job per key.
CREATE UNIQUE INDEX job_keys_one_running ON {s}.job_keys (key) WHERE running;
CREATE INDEX job_keys_job ON {s}.job_keys (job_id);

CREATE FUNCTION {s}._lock_keys(p_keys text[]) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    h integer;
BEGIN
    -- One global order for every transaction: no deadlock between them.
    FOR h IN SELECT DISTINCT hashtext(k) FROM unnest(p_keys) AS k ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock({lock}, h);
    END LOOP;
END $$;

CREATE FUNCTION {s}._retire(p_id bigint, p_keys text[]) RETURNS void LANGUAGE plpgsql AS $$
-- Caller holds the key locks of p_keys and has moved the job to a final state.
DECLARE
    r record;
    left_blockers integer;
    woke boolean := false;
BEGIN
    DELETE FROM {s}.job_keys WHERE job_id = p_id;
    -- Where p_id was the head, the new head (a larger id) is one key closer to
    -- runnable; where it was not, the smallest id left is smaller than p_id.
    FOR r IN
        SELECT head, count(*)::integer AS n
        FROM (SELECT (SELECT min(jk.job_id) FROM {s}.job_keys jk WHERE jk.key = k) AS head
              FROM unnest(p_keys) AS k) AS heads
        WHERE head > p_id
        GROUP BY head ORDER BY head
    LOOP
        UPDATE {s}.jobs SET blockers = blockers - r.n WHERE id = r.head
            RETURNING blockers INTO left_blockers;
        IF left_blockers = 0 THEN
            woke := true;
        END IF;
    END LOOP;
    IF woke THEN
        PERFORM pg_notify('{s}_ready', '');
    END IF;
    -- The token, not the id: a submitter registers its future under the token
    -- before its submit commits, so no notification can arrive unrecognized.
    PERFORM pg_notify('{s}_done', (SELECT token::text FROM {s}.jobs WHERE id = p_id));
END $$;

CREATE FUNCTION {s}.submit(p_token uuid, p_keys text[], p_func text, p_args jsonb, p_kwargs jsonb,
                           p_start_timeout double precision) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    v_id bigint;
    v_blockers integer;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'keyed_dispatch submit needs READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;
    IF cardinality(p_keys) IS NULL OR cardinality(p_keys) = 0 THEN
        RAISE EXCEPTION 'a job needs at least one key';
    END IF;
    PERFORM {s}._lock_keys(p_keys);
    -- A retried submit (its first attempt's commit was not acknowledged).
    SELECT id INTO v_id FROM {s}.jobs WHERE token = p_token;
    IF FOUND THEN
        RETURN v_id;
    END IF;
    SELECT count(DISTINCT key) INTO v_blockers FROM {s}.job_keys WHERE key = ANY (p_keys);
    -- The id is drawn under the key locks: on every key, id order = commit order.
    INSERT INTO {s}.jobs (token, keys, func, args, kwargs, blockers, deadline)
    VALUES (p_token, p_keys, p_func, p_args, p_kwargs, v_blockers,
            clock_timestamp() + make_interval(secs => p_start_timeout))
    RETURNING id INTO v_id;
    INSERT INTO {s}.job_keys (key, job_id) SELECT DISTINCT k, v_id FROM unnest(p_keys) AS k;
    IF v_blockers = 0 THEN
        PERFORM pg_notify('{s}_ready', '');
    END IF;
    RETURN v_id;
END $$;

CREATE FUNCTION {s}.claim(p_worker text, p_limit integer, p_lease double precision)
RETURNS TABLE (id bigint, attempt integer, keys text[], func text, args jsonb, kwargs jsonb,
               waited double precision)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_ids bigint[];
BEGIN
    SELECT array_agg(c.id ORDER BY c.id) INTO v_ids FROM (
        SELECT j.id FROM {s}.jobs j
        WHERE j.state = 'queued' AND j.blockers = 0
          AND (j.deadline IS NULL OR j.deadline > clock_timestamp())
          -- Belt and braces: the head of every key, read from the rows.
          AND NOT EXISTS (
              SELECT 1 FROM {s}.job_keys mine
              JOIN {s}.job_keys earlier ON earlier.key = mine.key AND earlier.job_id < mine.job_id
              WHERE mine.job_id = j.id)
        ORDER BY j.id
        LIMIT p_limit
        FOR UPDATE OF j SKIP LOCKED) AS c;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    UPDATE {s}.job_keys SET running = true WHERE job_id = ANY (v_ids);
    RETURN QUERY
    UPDATE {s}.jobs j
    SET state = 'running', attempt = j.attempt + 1, worker = p_worker,
        started_at = clock_timestamp(),
        lease_until = clock_timestamp() + make_interval(secs => p_lease)
    WHERE j.id = ANY (v_ids)
    RETURNING j.id, j.attempt, j.keys, j.func, j.args, j.kwargs,
              extract(epoch FROM j.started_at - j.submitted_at)::double precision;
END $$;

CREATE FUNCTION {s}.heartbeat(p_worker text, p_ids bigint[], p_attempts integer[],
                              p_lease double precision)
RETURNS SETOF bigint LANGUAGE plpgsql AS $$
BEGIN
    RETURN QUERY
    UPDATE {s}.jobs j SET lease_until = clock_timestamp() + make_interval(secs => p_lease)
    FROM unnest(p_ids, p_attempts) AS mine(id, attempt)
    WHERE j.id = mine.id AND j.attempt = mine.attempt AND j.state = 'running' AND j.worker = p_worker
    RETURNING j.id;
END $$;

CREATE FUNCTION {s}.finish(p_id bigint, p_attempt integer, p_state text, p_result jsonb,
                           p_error_type text, p_error_message text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_keys text[];
    v_state text;
    v_attempt integer;
BEGIN
    IF p_state NOT IN ('completed', 'failed') THEN
        RAISE EXCEPTION 'finish state must be completed or failed, got %', p_state;
    END IF;
    SELECT keys INTO v_keys FROM {s}.jobs WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM {s}._lock_keys(v_keys);
    UPDATE {s}.jobs
    SET state = p_state, result = p_result, error_type = p_error_type,
        error_message = p_error_message, finished_at = clock_timestamp(), lease_until = NULL
    WHERE id = p_id AND attempt = p_attempt AND state = 'running';
    IF NOT FOUND THEN
        -- Either this attempt's finish already committed (a retry after a lost
        -- acknowledgement: accept) or the attempt is stale (fenced: reject).
        SELECT state, attempt INTO v_state, v_attempt FROM {s}.jobs WHERE id = p_id;
        RETURN v_attempt = p_attempt AND v_state = p_state;
    END IF;
    PERFORM {s}._retire(p_id, v_keys);
    RETURN true;
END $$;

CREATE FUNCTION {s}.cancel(p_id bigint) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_keys text[];
BEGIN
    SELECT keys INTO v_keys FROM {s}.jobs WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM {s}._lock_keys(v_keys);
    UPDATE {s}.jobs SET state = 'cancelled', finished_at = clock_timestamp()
    WHERE id = p_id AND state = 'queued';
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM {s}._retire(p_id, v_keys);
    RETURN true;
END $$;

CREATE FUNCTION {s}.expire(p_limit integer DEFAULT 1000) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
    v_keys text[];
    r record;
    n integer := 0;
BEGIN
    SELECT array_agg(id ORDER BY id) INTO v_ids FROM (
        SELECT id FROM {s}.jobs WHERE state = 'queued' AND deadline <= clock_timestamp()
        ORDER BY deadline LIMIT p_limit) AS due;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    -- All the keys at once, so the locks are taken in the global order.
    SELECT array_agg(DISTINCT k) INTO v_keys
    FROM {s}.jobs, unnest(keys) AS k WHERE id = ANY (v_ids);
    PERFORM {s}._lock_keys(v_keys);
    FOR r IN
        UPDATE {s}.jobs
        SET state = 'expired', finished_at = clock_timestamp(), error_type = 'StartTimeout',
            error_message = format('job was not started within its start timeout (waited %s s)',
                                   round(extract(epoch FROM clock_timestamp() - submitted_at)::numeric, 3))
        WHERE id = ANY (v_ids) AND state = 'queued'
        RETURNING id, keys
    LOOP
        PERFORM {s}._retire(r.id, r.keys);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

CREATE FUNCTION {s}.recover(p_limit integer DEFAULT 1000) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    v_ids bigint[];
BEGIN
    SELECT array_agg(id ORDER BY id) INTO v_ids FROM (
        SELECT id FROM {s}.jobs
        WHERE state = 'running' AND lease_until < clock_timestamp()
        ORDER BY id LIMIT p_limit
        FOR UPDATE SKIP LOCKED) AS lost;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    -- Still the heads of their keys (their job_keys rows stay): they run
    -- again before any later job of those keys.
    UPDATE {s}.job_keys SET running = false WHERE job_id = ANY (v_ids);
    UPDATE {s}.jobs SET state = 'queued', worker = NULL, lease_until = NULL WHERE id = ANY (v_ids);
    PERFORM pg_notify('{s}_ready', '');
    RETURN cardinality(v_ids);
END $$;

CREATE FUNCTION {s}.prune(p_retention double precision, p_limit integer DEFAULT 10000)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM {s}.jobs WHERE id IN (
        SELECT id FROM {s}.jobs
        WHERE finished_at < clock_timestamp() - make_interval(secs => p_retention)
        LIMIT p_limit);
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END $$;
"""

# Version 2: a start deadline applies to the first start only; cancel()
# reports a job already cancelled; the functions run with their owner's
# rights, so callers need only EXECUTE on them (see the package docs, "Database
# roles"). A function replaced later must keep SECURITY DEFINER and its
# search_path: CREATE OR REPLACE resets them.
_V2 = """
CREATE OR REPLACE FUNCTION {s}.claim(p_worker text, p_limit integer, p_lease double precision)
RETURNS TABLE (id bigint, attempt integer, keys text[], func text, args jsonb, kwargs jsonb,
               waited double precision)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_ids bigint[];
BEGIN
    SELECT array_agg(c.id ORDER BY c.id) INTO v_ids FROM (
        SELECT j.id FROM {s}.jobs j
        WHERE j.state = 'queued' AND j.blockers = 0
          AND (j.deadline IS NULL OR j.deadline > clock_timestamp())
          -- Belt and braces: the head of every key, read from the rows.
          AND NOT EXISTS (
              SELECT 1 FROM {s}.job_keys mine
              JOIN {s}.job_keys earlier ON earlier.key = mine.key AND earlier.job_id < mine.job_id
              WHERE mine.job_id = j.id)
        ORDER BY j.id
        LIMIT p_limit
        FOR UPDATE OF j SKIP LOCKED) AS c;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    UPDATE {s}.job_keys SET running = true WHERE job_id = ANY (v_ids);
    -- The start deadline is met: a job queued again after its worker's lease
    -- expired runs again (it has started once), it does not expire.
    RETURN QUERY
    UPDATE {s}.jobs j
    SET state = 'running', attempt = j.attempt + 1, worker = p_worker, deadline = NULL,
        started_at = clock_timestamp(),
        lease_until = clock_timestamp() + make_interval(secs => p_lease)
    WHERE j.id = ANY (v_ids)
    RETURNING j.id, j.attempt, j.keys, j.func, j.args, j.kwargs,
              extract(epoch FROM j.started_at - j.submitted_at)::double precision;
END $$;

UPDATE {s}.jobs SET deadline = NULL WHERE attempt > 0 AND deadline IS NOT NULL;

CREATE OR REPLACE FUNCTION {s}.cancel(p_id bigint) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_keys text[];
BEGIN
    SELECT keys INTO v_keys FROM {s}.jobs WHERE id = p_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM {s}._lock_keys(v_keys);
    UPDATE {s}.jobs SET state = 'cancelled', finished_at = clock_timestamp()
    WHERE id = p_id AND state = 'queued';
    IF NOT FOUND THEN
        -- Cancelled already (elsewhere, or by this cancel sent again after
        -- its acknowledgement was lost): it will never run either way.
        RETURN EXISTS (SELECT 1 FROM {s}.jobs WHERE id = p_id AND state = 'cancelled');
    END IF;
    PERFORM {s}._retire(p_id, v_keys);
    RETURN true;
END $$;

ALTER FUNCTION {s}.submit(uuid, text[], text, jsonb, jsonb, double precision)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {s}.heartbeat(text, bigint[], integer[], double precision)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {s}.finish(bigint, integer, text, jsonb, text, text)
    SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {s}.expire(integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {s}.recover(integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
ALTER FUNCTION {s}.prune(double precision, integer) SECURITY DEFINER SET search_path = pg_catalog, pg_temp;
-- PostgreSQL grants EXECUTE on new functions to everyone: only the roles
-- granted it (and the owner) may call them now.
REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} FROM PUBLIC;
"""

# Version 3: key policies. Retries keep a failed job at the head of its keys
# (``not_before``: not claimable until then; its ``job_keys`` rows stay);
# exhausted ones are kept in ``dead_letters``. Supersede retires, at the new
# job's admission, earlier never-started opted-in jobs whose keys are a
# subset of its own. Paused keys (``paused_keys``) start nothing. The new
# functions are SECURITY DEFINER with a fixed search_path, as in version 2.
_V3 = """
ALTER TABLE {s}.jobs
    ADD COLUMN retry jsonb,
    ADD COLUMN supersede boolean NOT NULL DEFAULT false,
    ADD COLUMN not_before timestamptz,
    ADD COLUMN first_started_at timestamptz,
    ADD COLUMN failures jsonb NOT NULL DEFAULT '[]';
ALTER TABLE {s}.jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE {s}.jobs ADD CONSTRAINT jobs_state_check CHECK (state IN
    ('queued', 'running', 'completed', 'failed', 'expired', 'cancelled', 'superseded'));
UPDATE {s}.jobs SET first_started_at = started_at WHERE started_at IS NOT NULL;
CREATE INDEX jobs_backoff ON {s}.jobs (not_before) WHERE state = 'queued' AND not_before IS NOT NULL;

CREATE TABLE {s}.paused_keys (
    key       text PRIMARY KEY,
    paused_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Jobs whose retries are exhausted (jobs with a retry policy that failed for
-- good), until requeue() takes them back. Not pruned with the jobs.
CREATE TABLE {s}.dead_letters (
    job_id        bigint PRIMARY KEY,
    keys          text[] NOT NULL,
    func          text NOT NULL,
    args          jsonb NOT NULL,
    kwargs        jsonb NOT NULL,
    retry         jsonb NOT NULL,
    attempts      integer NOT NULL,
    error_type    text,
    error_message text,
    failures      jsonb NOT NULL,
    failed_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE FUNCTION {s}._admit(p_token uuid, p_keys text[], p_func text, p_args jsonb, p_kwargs jsonb,
                           p_start_timeout double precision, p_retry jsonb, p_supersede boolean)
RETURNS bigint LANGUAGE plpgsql AS $$
-- Caller holds the key locks of p_keys (and has checked them and p_token).
DECLARE
    v_id bigint;
    v_blockers integer;
BEGIN
    SELECT count(DISTINCT key) INTO v_blockers FROM {s}.job_keys WHERE key = ANY (p_keys);
    -- The id is drawn under the key locks: on every key, id order = commit order.
    INSERT INTO {s}.jobs (token, keys, func, args, kwargs, blockers, deadline, retry, supersede)
    VALUES (p_token, p_keys, p_func, p_args, p_kwargs, v_blockers,
            clock_timestamp() + make_interval(secs => p_start_timeout), p_retry, p_supersede)
    RETURNING id INTO v_id;
    INSERT INTO {s}.job_keys (key, job_id) SELECT DISTINCT k, v_id FROM unnest(p_keys) AS k;
    IF v_blockers = 0 THEN
        PERFORM pg_notify('{s}_ready', '');
    END IF;
    RETURN v_id;
END $$;

CREATE FUNCTION {s}.submit(p_token uuid, p_keys text[], p_func text, p_args jsonb, p_kwargs jsonb,
                           p_start_timeout double precision, p_retry jsonb, p_supersede boolean)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id bigint;
    r record;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'keyed_dispatch submit needs READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;
    IF cardinality(p_keys) IS NULL OR cardinality(p_keys) = 0 THEN
        RAISE EXCEPTION 'a job needs at least one key';
    END IF;
    -- fail() reads the policy in a worker's transaction: a bad one is refused here.
    IF p_retry IS NOT NULL AND NOT (
        jsonb_typeof(p_retry -> 'attempts') = 'number' AND jsonb_typeof(p_retry -> 'backoff') = 'number'
        AND jsonb_typeof(p_retry -> 'max_backoff') = 'number' AND jsonb_typeof(p_retry -> 'jitter') = 'number'
        AND jsonb_typeof(p_retry -> 'on') = 'array'
        AND coalesce(jsonb_typeof(p_retry -> 'deadline'), 'null') IN ('number', 'null'))
    THEN
        RAISE EXCEPTION 'a retry policy needs numbers attempts, backoff, max_backoff, jitter, %',
            format('deadline (or null) and an array on, got %s', p_retry);
    END IF;
    PERFORM {s}._lock_keys(p_keys);
    -- A retried submit (its first attempt's commit was not acknowledged).
    SELECT id INTO v_id FROM {s}.jobs WHERE token = p_token;
    IF FOUND THEN
        RETURN v_id;
    END IF;
    IF p_supersede THEN
        -- Their keys are among p_keys, all locked: retiring them is safe here.
        FOR r IN
            UPDATE {s}.jobs j SET state = 'superseded', finished_at = clock_timestamp()
            WHERE j.id IN (SELECT jk.job_id FROM {s}.job_keys jk WHERE jk.key = ANY (p_keys))
              AND j.state = 'queued' AND j.attempt = 0 AND j.supersede AND j.keys <@ p_keys
            RETURNING j.id, j.keys
        LOOP
            PERFORM {s}._retire(r.id, r.keys);
        END LOOP;
    END IF;
    RETURN {s}._admit(p_token, p_keys, p_func, p_args, p_kwargs, p_start_timeout, p_retry, p_supersede);
END $$;

CREATE OR REPLACE FUNCTION {s}.claim(p_worker text, p_limit integer, p_lease double precision)
RETURNS TABLE (id bigint, attempt integer, keys text[], func text, args jsonb, kwargs jsonb,
               waited double precision)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_ids bigint[];
BEGIN
    SELECT array_agg(c.id ORDER BY c.id) INTO v_ids FROM (
        SELECT j.id FROM {s}.jobs j
        WHERE j.state = 'queued' AND j.blockers = 0
          AND (j.deadline IS NULL OR j.deadline > clock_timestamp())
          AND (j.not_before IS NULL OR j.not_before <= clock_timestamp())
          -- Belt and braces: the head of every key, read from the rows.
          AND NOT EXISTS (
              SELECT 1 FROM {s}.job_keys mine
              JOIN {s}.job_keys earlier ON earlier.key = mine.key AND earlier.job_id < mine.job_id
              WHERE mine.job_id = j.id)
          AND NOT EXISTS (
              SELECT 1 FROM {s}.job_keys mine JOIN {s}.paused_keys p ON p.key = mine.key
              WHERE mine.job_id = j.id)
        ORDER BY j.id
        LIMIT p_limit
        FOR UPDATE OF j SKIP LOCKED) AS c;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    -- Again with a new snapshot: a pause that committed after the one above
    -- was taken. pause() waits for the rows locked above, so once it returns
    -- no claim can start a job of its key.
    SELECT array_agg(c.id ORDER BY c.id) INTO v_ids FROM unnest(v_ids) AS c(id)
    WHERE NOT EXISTS (
        SELECT 1 FROM {s}.job_keys mine JOIN {s}.paused_keys p ON p.key = mine.key
        WHERE mine.job_id = c.id);
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    UPDATE {s}.job_keys SET running = true WHERE job_id = ANY (v_ids);
    -- The start deadline is met: a job queued again after its worker's lease
    -- expired runs again (it has started once), it does not expire. A retry
    -- has waited since its backoff ended.
    RETURN QUERY
    UPDATE {s}.jobs j
    SET state = 'running', attempt = j.attempt + 1, worker = p_worker, deadline = NULL,
        started_at = clock_timestamp(),
        first_started_at = coalesce(j.first_started_at, clock_timestamp()),
        lease_until = clock_timestamp() + make_interval(secs => p_lease)
    WHERE j.id = ANY (v_ids)
    RETURNING j.id, j.attempt, j.keys, j.func, j.args, j.kwargs,
              extract(epoch FROM j.started_at - coalesce(j.not_before, j.submitted_at))::double precision;
END $$;

CREATE FUNCTION {s}.fail(p_id bigint, p_attempt integer, p_error_types text[], p_error_message text)
RETURNS TABLE (outcome text, retry_in double precision)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
-- p_error_types: the qualified names of the exception's classes, its own
-- first, then its bases (its MRO): a policy's ``on`` names match as
-- isinstance() would.
DECLARE
    v_keys text[];
    v_job record;
    v_policy jsonb;
    v_delay double precision;
BEGIN
    SELECT j.keys INTO v_keys FROM {s}.jobs j WHERE j.id = p_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'stale'::text, NULL::double precision;
        RETURN;
    END IF;
    PERFORM {s}._lock_keys(v_keys);
    SELECT * INTO v_job FROM {s}.jobs j WHERE j.id = p_id FOR UPDATE;  -- recover() skips it now
    IF v_job.state <> 'running' OR v_job.attempt <> p_attempt THEN
        -- This attempt's failure committed already (sent again after a lost
        -- acknowledgement: accept), or the attempt is stale (fenced: reject).
        IF v_job.attempt = p_attempt AND v_job.state = 'failed' THEN
            RETURN QUERY SELECT 'failed'::text, NULL::double precision;
        ELSIF v_job.failures @> jsonb_build_array(jsonb_build_object('attempt', p_attempt)) THEN
            RETURN QUERY SELECT 'retry'::text,
                greatest(0, extract(epoch FROM v_job.not_before - clock_timestamp()))::double precision;
        ELSE
            RETURN QUERY SELECT 'stale'::text, NULL::double precision;
        END IF;
        RETURN;
    END IF;
    v_policy := v_job.retry;
    IF v_policy IS NOT NULL AND p_attempt < (v_policy ->> 'attempts')::integer
       AND (v_policy -> 'on') ?| p_error_types THEN
        -- As Retry.delay: doubling from backoff, capped, scaled by the jitter.
        v_delay := greatest(0.0,
            least((v_policy ->> 'max_backoff')::double precision,
                  (v_policy ->> 'backoff')::double precision * 2.0 ^ least(p_attempt - 1, 64))
            * (1.0 + (v_policy ->> 'jitter')::double precision * (2.0 * random() - 1.0)));
        IF v_policy ->> 'deadline' IS NULL
           OR clock_timestamp() + make_interval(secs => v_delay)
              <= v_job.first_started_at + make_interval(secs => (v_policy ->> 'deadline')::double precision)
        THEN
            -- Still the head of its keys (its job_keys rows stay): later jobs
            -- of those keys wait; no worker holds it meanwhile.
            UPDATE {s}.job_keys SET running = false WHERE job_id = p_id;
            UPDATE {s}.jobs
            SET state = 'queued', worker = NULL, lease_until = NULL,
                not_before = clock_timestamp() + make_interval(secs => v_delay),
                failures = failures || jsonb_build_array(jsonb_build_object(
                    'attempt', p_attempt, 'error_type', p_error_types[1], 'message', p_error_message))
            WHERE id = p_id;
            RETURN QUERY SELECT 'retry'::text, v_delay;
            RETURN;
        END IF;
    END IF;
    UPDATE {s}.jobs
    SET state = 'failed', error_type = p_error_types[1], error_message = p_error_message,
        finished_at = clock_timestamp(), lease_until = NULL
    WHERE id = p_id;
    IF v_policy IS NOT NULL THEN
        INSERT INTO {s}.dead_letters (job_id, keys, func, args, kwargs, retry, attempts, error_type,
                                      error_message, failures)
        VALUES (p_id, v_job.keys, v_job.func, v_job.args, v_job.kwargs, v_policy, p_attempt,
                p_error_types[1], p_error_message, v_job.failures)
        ON CONFLICT (job_id) DO NOTHING;
    END IF;
    PERFORM {s}._retire(p_id, v_keys);
    RETURN QUERY SELECT 'failed'::text, NULL::double precision;
END $$;

CREATE FUNCTION {s}.requeue(p_token uuid, p_job_id bigint) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_keys text[];
    v_letter record;
    v_id bigint;
BEGIN
    SELECT keys INTO v_keys FROM {s}.dead_letters WHERE job_id = p_job_id;
    IF NOT FOUND THEN
        -- Requeued already by this call, sent again after a lost acknowledgement?
        SELECT id INTO v_id FROM {s}.jobs WHERE token = p_token;
        IF FOUND THEN
            RETURN v_id;
        END IF;
        RAISE EXCEPTION 'no dead letter for job % (never dead, or requeued already)', p_job_id
            USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM {s}._lock_keys(v_keys);
    -- Under the key locks: a concurrent requeue of the same letter is done.
    DELETE FROM {s}.dead_letters WHERE job_id = p_job_id RETURNING * INTO v_letter;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no dead letter for job % (requeued already)', p_job_id
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN {s}._admit(p_token, v_letter.keys, v_letter.func, v_letter.args, v_letter.kwargs,
                      NULL, v_letter.retry, false);
END $$;

CREATE FUNCTION {s}.pause(p_key text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_new boolean;
BEGIN
    -- The key's lock: no submit on it is half done while the jobs are locked below.
    PERFORM {s}._lock_keys(ARRAY[p_key]);
    INSERT INTO {s}.paused_keys (key) VALUES (p_key) ON CONFLICT (key) DO NOTHING;
    v_new := FOUND;
    -- Wait for the claims that hold a queued job of the key (their second
    -- look, in claim(), cannot see this pause before it commits): once this
    -- returns, every job of the key that started has been marked running.
    PERFORM 1 FROM {s}.jobs j
    WHERE j.id IN (SELECT jk.job_id FROM {s}.job_keys jk WHERE jk.key = p_key) AND j.state = 'queued'
    FOR UPDATE;
    RETURN v_new;
END $$;

CREATE FUNCTION {s}.resume(p_key text) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM {s}.paused_keys WHERE key = p_key;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('{s}_ready', '');
    RETURN true;
END $$;

CREATE FUNCTION {s}.cancel_pending(p_key text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_ids bigint[];
    v_keys text[];
    r record;
    n integer := 0;
BEGIN
    SELECT array_agg(job_id ORDER BY job_id) INTO v_ids
    FROM {s}.job_keys WHERE key = p_key AND NOT running;
    IF v_ids IS NULL THEN
        RETURN 0;
    END IF;
    -- All the keys at once, so the locks are taken in the global order.
    SELECT array_agg(DISTINCT k) INTO v_keys FROM {s}.jobs, unnest(keys) AS k WHERE id = ANY (v_ids);
    PERFORM {s}._lock_keys(v_keys);
    FOR r IN
        UPDATE {s}.jobs SET state = 'cancelled', finished_at = clock_timestamp()
        WHERE id = ANY (v_ids) AND state = 'queued'
        RETURNING id, keys
    LOOP
        PERFORM {s}._retire(r.id, r.keys);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

CREATE FUNCTION {s}.key_info(p_key text, p_limit integer)
RETURNS TABLE (key text, pending integer, running boolean, oldest_wait double precision,
               paused boolean, in_backoff boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
-- One key (p_key), or every live key (p_key NULL: with unfinished jobs, or
-- paused), deepest first. Pending: queued and not waiting for a retry.
DECLARE
    v_now timestamptz := clock_timestamp();
BEGIN
    RETURN QUERY
    WITH live AS (
        SELECT jk.key,
               count(*) FILTER (WHERE j.state = 'queued' AND NOT coalesce(j.not_before > v_now, false))
                   AS pending,
               bool_or(jk.running) AS running,
               min(coalesce(j.not_before, j.submitted_at))
                   FILTER (WHERE j.state = 'queued' AND NOT coalesce(j.not_before > v_now, false)) AS oldest,
               bool_or(j.state = 'queued' AND coalesce(j.not_before > v_now, false)) AS in_backoff
        FROM {s}.job_keys jk JOIN {s}.jobs j ON j.id = jk.job_id
        WHERE p_key IS NULL OR jk.key = p_key
        GROUP BY jk.key),
    paused AS (SELECT p.key FROM {s}.paused_keys p WHERE p_key IS NULL OR p.key = p_key),
    info AS (
        SELECT coalesce(l.key, p.key) AS key, coalesce(l.pending, 0)::integer AS pending,
               coalesce(l.running, false) AS running,
               coalesce(extract(epoch FROM v_now - l.oldest), 0)::double precision AS oldest_wait,
               p.key IS NOT NULL AS paused, coalesce(l.in_backoff, false) AS in_backoff
        FROM live l FULL JOIN paused p ON p.key = l.key)
    SELECT i.key, i.pending, i.running, i.oldest_wait, i.paused, i.in_backoff FROM info i
    ORDER BY i.pending DESC, i.oldest_wait DESC, i.key
    LIMIT p_limit;
END $$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} FROM PUBLIC;
"""

# Version 4: fewer round trips and fewer statements. ``finish_claim()``
# records a worker's completed jobs and claims its next ones in one
# transaction, and wakes the other workers only for the jobs it made
# runnable and did not take; it reports results on ``{s}_results`` with
# small results inline, so a submitter resolves its futures without reading
# them back. ``submit_many()`` admits a batch in one transaction. claim() and
# _lock_keys() do the same work in fewer statements. The hot functions plan
# their statements once per session (plan_cache_mode: with array
# parameters PostgreSQL would otherwise plan them again at every call, which
# cost more than running them), and with index lookups and nested loops
# only: they touch a few rows by their keys, and on a small or not yet
# analyzed table the planner would scan a whole table or index instead. SECURITY DEFINER with a fixed
# search_path, as in version 2.
_V4 = """
CREATE OR REPLACE FUNCTION {s}._lock_keys(p_keys text[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- One global order for every transaction: no deadlock between them. The
    -- locks are taken as the sorted rows come out of the subquery.
    PERFORM pg_advisory_xact_lock({lock}, sorted.h)
    FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest(p_keys) AS k ORDER BY 1) AS sorted;
END $$;

CREATE OR REPLACE FUNCTION {s}.claim(p_worker text, p_limit integer, p_lease double precision)
RETURNS TABLE (id bigint, attempt integer, keys text[], func text, args jsonb, kwargs jsonb,
               waited double precision)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off
SET enable_hashjoin = off SET enable_mergejoin = off AS $$
#variable_conflict use_column
DECLARE
    v_ids bigint[];
BEGIN
    SELECT array_agg(c.id ORDER BY c.id) INTO v_ids FROM (
        SELECT j.id FROM {s}.jobs j
        WHERE j.state = 'queued' AND j.blockers = 0
          AND (j.deadline IS NULL OR j.deadline > clock_timestamp())
          AND (j.not_before IS NULL OR j.not_before <= clock_timestamp())
          -- Belt and braces: the head of every key, read from the rows.
          AND NOT EXISTS (
              SELECT 1 FROM {s}.job_keys mine
              JOIN {s}.job_keys earlier ON earlier.key = mine.key AND earlier.job_id < mine.job_id
              WHERE mine.job_id = j.id)
          AND NOT EXISTS (
              SELECT 1 FROM {s}.job_keys mine JOIN {s}.paused_keys p ON p.key = mine.key
              WHERE mine.job_id = j.id)
        ORDER BY j.id
        LIMIT p_limit
        FOR UPDATE OF j SKIP LOCKED) AS c;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    -- This statement's snapshot is new: it sees a pause that committed
    -- after the one above was taken. pause() waits for the rows locked
    -- above, so once it returns no claim can start a job of its key. The
    -- start deadline is met: a job queued again after its worker's lease
    -- expired runs again (it has started once), it does not expire. A retry
    -- has waited since its backoff ended.
    RETURN QUERY
    WITH picked AS (
        SELECT c.id FROM unnest(v_ids) AS c(id)
        WHERE NOT EXISTS (
            SELECT 1 FROM {s}.job_keys mine JOIN {s}.paused_keys p ON p.key = mine.key
            WHERE mine.job_id = c.id)),
    marked AS (
        UPDATE {s}.job_keys jk SET running = true WHERE jk.job_id IN (SELECT picked.id FROM picked))
    UPDATE {s}.jobs j
    SET state = 'running', attempt = j.attempt + 1, worker = p_worker, deadline = NULL,
        started_at = clock_timestamp(),
        first_started_at = coalesce(j.first_started_at, clock_timestamp()),
        lease_until = clock_timestamp() + make_interval(secs => p_lease)
    WHERE j.id IN (SELECT picked.id FROM picked)
    RETURNING j.id, j.attempt, j.keys, j.func, j.args, j.kwargs,
              extract(epoch FROM j.started_at - coalesce(j.not_before, j.submitted_at))::double precision;
END $$;

CREATE FUNCTION {s}.finish_claim(p_worker text, p_ids bigint[], p_attempts integer[], p_results jsonb[],
                                 p_limit integer, p_lease double precision)
RETURNS TABLE (id bigint, attempt integer, keys text[], func text, args jsonb, kwargs jsonb,
               waited double precision)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off SET enable_bitmapscan = off
SET enable_hashjoin = off SET enable_mergejoin = off AS $$
-- Records the attempts (p_ids, p_attempts) as completed with p_results, as
-- finish() would, then claims up to p_limit jobs, as claim() would. Returns
-- the claimed jobs, and a row with only id and attempt (func NULL) for each
-- attempt refused as stale (fenced).
#variable_conflict use_column
DECLARE
    v_done bigint[] := ARRAY[]::bigint[];
    v_woken bigint[] := ARRAY[]::bigint[];
    v_claimed bigint[] := ARRAY[]::bigint[];
    v_payload text := '';
    v_entry text;
    v_left integer;
    r record;
BEGIN
    IF cardinality(p_ids) > 0 THEN
        -- All the keys at once, in the global order (as _lock_keys).
        PERFORM pg_advisory_xact_lock({lock}, sorted.h)
        FROM (SELECT DISTINCT hashtext(k) AS h FROM {s}.jobs j, unnest(j.keys) AS k
              WHERE j.id = ANY (p_ids) ORDER BY 1) AS sorted;
        FOR r IN
            UPDATE {s}.jobs j
            SET state = 'completed', result = m.result, finished_at = clock_timestamp(), lease_until = NULL
            FROM unnest(p_ids, p_attempts, p_results) AS m(id, attempt, result)
            WHERE j.id = m.id AND j.attempt = m.attempt AND j.state = 'running'
            RETURNING j.id, j.token, j.result
        LOOP
            v_done := v_done || r.id;
            -- [token, result], or the token alone when the result does not
            -- fit in a notification (at most 8000 bytes): read it back then.
            v_entry := json_build_array(r.token, r.result)::text;
            IF octet_length(v_entry) > 7800 THEN
                v_entry := to_json(r.token::text)::text;
            END IF;
            IF octet_length(v_payload) + octet_length(v_entry) > 7800 THEN
                PERFORM pg_notify('{s}_results', '[' || v_payload || ']');
                v_payload := '';
            END IF;
            v_payload := CASE WHEN v_payload = '' THEN v_entry ELSE v_payload || ',' || v_entry END;
        END LOOP;
        IF v_payload <> '' THEN
            PERFORM pg_notify('{s}_results', '[' || v_payload || ']');
        END IF;
        -- As _retire for each: these jobs were running, so they were the
        -- heads of their keys, and no two share a key; the next job of each
        -- key is one key closer to runnable. The scans start at the finished
        -- job, past the index entries of the earlier ones. The new heads'
        -- rows are locked in ascending ids.
        FOR r IN
            WITH gone AS (
                DELETE FROM {s}.job_keys jk WHERE jk.job_id = ANY (v_done) RETURNING jk.key, jk.job_id)
            SELECT heads.head, count(*)::integer AS n
            FROM (SELECT (SELECT min(jk.job_id) FROM {s}.job_keys jk
                          WHERE jk.key = gone.key AND jk.job_id > gone.job_id) AS head
                  FROM gone) AS heads
            WHERE heads.head IS NOT NULL
            GROUP BY heads.head ORDER BY heads.head
        LOOP
            UPDATE {s}.jobs j SET blockers = j.blockers - r.n WHERE j.id = r.head
                RETURNING j.blockers INTO v_left;
            IF v_left = 0 THEN
                v_woken := v_woken || r.head;
            END IF;
        END LOOP;
        IF cardinality(v_done) < cardinality(p_ids) THEN
            -- Refused: neither recorded now nor before (a finish sent again
            -- after its acknowledgement was lost is accepted, as by finish()).
            RETURN QUERY
            SELECT m.id, m.attempt, NULL::text[], NULL::text, NULL::jsonb, NULL::jsonb, NULL::double precision
            FROM unnest(p_ids, p_attempts) AS m(id, attempt)
            WHERE NOT m.id = ANY (v_done)
              AND NOT EXISTS (SELECT 1 FROM {s}.jobs j
                              WHERE j.id = m.id AND j.attempt = m.attempt AND j.state = 'completed');
        END IF;
    END IF;
    IF p_limit > 0 THEN
        FOR r IN SELECT * FROM {s}.claim(p_worker, p_limit, p_lease) LOOP
            id := r.id;
            attempt := r.attempt;
            keys := r.keys;
            func := r.func;
            args := r.args;
            kwargs := r.kwargs;
            waited := r.waited;
            v_claimed := v_claimed || r.id;
            RETURN NEXT;
        END LOOP;
    END IF;
    -- Wake the other workers only for the jobs made runnable here and not
    -- taken by this claim (their rows are locked here: no one else took them).
    IF NOT v_woken <@ v_claimed THEN
        PERFORM pg_notify('{s}_ready', '');
    END IF;
END $$;

CREATE FUNCTION {s}.submit_many(p_jobs jsonb, p_start_timeout double precision, p_retry jsonb,
                                p_supersede boolean)
RETURNS SETOF bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
-- Admits the jobs of p_jobs as that many submit() calls in a row would, in
-- one transaction; returns their ids in order. p_jobs is a JSON array of
-- [token, [key text, ...], func, args array, kwargs object], one per job.
DECLARE
    v_tokens uuid[];
    v_keys text[];
    v_sequence regclass;
    v_ids bigint[];
    v_job jsonb;
    v_ready boolean;
    r record;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'keyed_dispatch submit needs READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;
    IF jsonb_typeof(p_jobs) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'submit_many needs a JSON array of jobs, got %', left(p_jobs::text, 100);
    END IF;
    IF jsonb_array_length(p_jobs) = 0 THEN
        RETURN;
    END IF;
    SELECT j INTO v_job FROM jsonb_array_elements(p_jobs) AS j
    WHERE NOT coalesce(jsonb_typeof(j) = 'array' AND jsonb_array_length(j) = 5
                       AND jsonb_typeof(j -> 0) = 'string' AND jsonb_typeof(j -> 1) = 'array'
                       AND jsonb_typeof(j -> 2) = 'string' AND jsonb_typeof(j -> 3) = 'array'
                       AND jsonb_typeof(j -> 4) = 'object', false)
       OR EXISTS (SELECT 1 FROM jsonb_array_elements(j -> 1) AS k WHERE jsonb_typeof(k) <> 'string')
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'a job of submit_many is %, got %',
            '[token, [key text, ...], func, args array, kwargs object]', left(v_job::text, 200);
    END IF;
    IF EXISTS (SELECT 1 FROM jsonb_array_elements(p_jobs) AS j WHERE jsonb_array_length(j -> 1) = 0) THEN
        RAISE EXCEPTION 'a job needs at least one key';
    END IF;
    -- fail() reads the policy in a worker's transaction: a bad one is refused
    -- here (a missing field too: coalesce).
    IF p_retry IS NOT NULL AND NOT coalesce(
        jsonb_typeof(p_retry -> 'attempts') = 'number' AND jsonb_typeof(p_retry -> 'backoff') = 'number'
        AND jsonb_typeof(p_retry -> 'max_backoff') = 'number' AND jsonb_typeof(p_retry -> 'jitter') = 'number'
        AND jsonb_typeof(p_retry -> 'on') = 'array'
        AND coalesce(jsonb_typeof(p_retry -> 'deadline'), 'null') IN ('number', 'null'), false)
    THEN
        RAISE EXCEPTION 'a retry policy needs numbers attempts, backoff, max_backoff, jitter, %',
            format('deadline (or null) and an array on, got %s', p_retry);
    END IF;
    v_tokens := ARRAY(SELECT (x.j ->> 0)::uuid FROM jsonb_array_elements(p_jobs) WITH ORDINALITY AS x(j, i)
                      ORDER BY x.i);
    -- Every key of the batch, once, in the global order.
    v_keys := ARRAY(SELECT k FROM jsonb_array_elements(p_jobs) AS j, jsonb_array_elements_text(j -> 1) AS k);
    PERFORM {s}._lock_keys(v_keys);
    -- A retried batch (its first attempt's commit was not acknowledged): it
    -- committed whole or not at all.
    IF EXISTS (SELECT 1 FROM {s}.jobs j WHERE j.token = ANY (v_tokens)) THEN
        RETURN QUERY
        SELECT j.id FROM unnest(v_tokens) WITH ORDINALITY AS t(token, i)
        JOIN {s}.jobs j ON j.token = t.token ORDER BY t.i;
        RETURN;
    END IF;
    IF p_supersede THEN
        -- One job after the other, as submit() does: each may retire earlier
        -- jobs, of this batch too.
        FOR i IN 1 .. cardinality(v_tokens) LOOP
            v_job := p_jobs -> (i - 1);
            v_keys := ARRAY(SELECT jsonb_array_elements_text(v_job -> 1));
            FOR r IN
                UPDATE {s}.jobs j SET state = 'superseded', finished_at = clock_timestamp()
                WHERE j.id IN (SELECT jk.job_id FROM {s}.job_keys jk WHERE jk.key = ANY (v_keys))
                  AND j.state = 'queued' AND j.attempt = 0 AND j.supersede AND j.keys <@ v_keys
                RETURNING j.id, j.keys
            LOOP
                PERFORM {s}._retire(r.id, r.keys);
            END LOOP;
            RETURN NEXT {s}._admit(v_tokens[i], v_keys, v_job ->> 2, v_job -> 3, v_job -> 4,
                                   p_start_timeout, p_retry, true);
        END LOOP;
        RETURN;
    END IF;
    -- Drawn under the key locks and ascending in batch order: on every key,
    -- id order is admission order, as for submits in a row.
    v_sequence := pg_get_serial_sequence('{s}.jobs', 'id')::regclass;
    v_ids := ARRAY(SELECT nextval(v_sequence) FROM generate_series(1, cardinality(v_tokens)) ORDER BY 1);
    WITH item AS (
        SELECT x.i::integer AS i, v_ids[x.i] AS id, x.j
        FROM jsonb_array_elements(p_jobs) WITH ORDINALITY AS x(j, i)),
    item_key AS (
        SELECT DISTINCT item.i, item.id, k.key FROM item, jsonb_array_elements_text(item.j -> 1) AS k(key)),
    busy AS (SELECT DISTINCT jk.key FROM {s}.job_keys jk WHERE jk.key = ANY (v_keys)),
    blocked AS (
        -- A job's key blocks it when an unfinished job holds the key, or an
        -- earlier job of this batch.
        SELECT ik.i,
               count(*) FILTER (WHERE ik.i > ik.first_i
                                   OR EXISTS (SELECT 1 FROM busy b WHERE b.key = ik.key))::integer AS n
        FROM (SELECT item_key.*, min(item_key.i) OVER (PARTITION BY item_key.key) AS first_i
              FROM item_key) AS ik
        GROUP BY ik.i),
    admitted AS (
        INSERT INTO {s}.jobs (id, token, keys, func, args, kwargs, blockers, deadline, retry, supersede)
        SELECT item.id, v_tokens[item.i], ARRAY(SELECT jsonb_array_elements_text(item.j -> 1)), item.j ->> 2,
               item.j -> 3, item.j -> 4, blocked.n,
               clock_timestamp() + make_interval(secs => p_start_timeout), p_retry, false
        FROM item JOIN blocked ON blocked.i = item.i
        ORDER BY item.i
        RETURNING id, blockers),
    queued AS (
        INSERT INTO {s}.job_keys (key, job_id)
        SELECT item_key.key, item_key.id FROM item_key JOIN admitted ON admitted.id = item_key.id)
    SELECT bool_or(blockers = 0) INTO v_ready FROM admitted;
    IF v_ready THEN
        PERFORM pg_notify('{s}_ready', '');
    END IF;
    RETURN QUERY SELECT unnest(v_ids);
END $$;

REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA {s} FROM PUBLIC;
"""

#: (version, SQL template) in order; applied ones are recorded in
#: ``{schema}.migrations``. Append, never edit a released entry.
MIGRATIONS: tuple[tuple[int, str], ...] = ((1, _V1), (2, _V2), (3, _V3), (4, _V4))

SCHEMA_VERSION = MIGRATIONS[-1][0]


def migrations(schema: str) -> list[tuple[int, str]]:
    """The migrations with the schema name and lock class filled in."""
    check_schema_name(schema)
    lock = lock_class(schema)
    return [(version, sql.format(s=schema, lock=lock)) for version, sql in MIGRATIONS]


# The statements the Python side sends; ``{s}`` is the (validated) schema.
_STATEMENTS = {
    "submit": "SELECT {s}.submit(%s, %s, %s, %s::jsonb, %s::jsonb, %s, %s::jsonb, %s)",
    "submit_many": "SELECT * FROM {s}.submit_many(%s::jsonb, %s, %s::jsonb, %s)",
    "requeue": "SELECT {s}.requeue(%s, %s)",
    "pause": "SELECT {s}.pause(%s)",
    "resume": "SELECT {s}.resume(%s)",
    "cancel_pending": "SELECT {s}.cancel_pending(%s)",
    "key_info": "SELECT * FROM {s}.key_info(%s, %s)",
    "dead_letters": (
        "SELECT job_id, keys, func, args, kwargs, attempts, error_type, error_message, failures, failed_at"
        " FROM {s}.dead_letters ORDER BY job_id LIMIT %s"
    ),
    "cancel": "SELECT {s}.cancel(%s)",
    "expire": "SELECT {s}.expire()",
    "claim": "SELECT * FROM {s}.claim(%s, %s, %s)",
    "finish_claim": "SELECT * FROM {s}.finish_claim(%s, %s, %s, %s::jsonb[], %s, %s)",
    "finish": "SELECT {s}.finish(%s, %s, %s, %s::jsonb, %s, %s)",
    "fail": "SELECT * FROM {s}.fail(%s, %s, %s, %s)",
    "heartbeat": "SELECT {s}.heartbeat(%s, %s, %s, %s)",
    "maintain": "SELECT {s}.recover(), {s}.expire(), {s}.prune(%s)",
    "listen_ready": "LISTEN {s}_ready",
    "listen_done": "LISTEN {s}_done",
    "listen_results": "LISTEN {s}_results",
    "results": (
        "SELECT w.token, j.id, j.state, j.result, j.error_type, j.error_message, j.keys, j.attempt,"
        " j.failures"
        " FROM unnest(%s::uuid[]) AS w(token) LEFT JOIN {s}.jobs j ON j.token = w.token"
        " WHERE j.id IS NULL OR j.state NOT IN ('queued', 'running')"
    ),
    "stats": """SELECT
        (SELECT coalesce(json_object_agg(state, n), '{{}}')
           FROM (SELECT state, count(*) AS n FROM {s}.jobs GROUP BY state) AS c),
        (SELECT coalesce(extract(epoch FROM clock_timestamp() - min(submitted_at)), 0)::float8
           FROM {s}.jobs WHERE state = 'queued'),
        (SELECT coalesce(json_agg(json_build_array(key, n)), '[]')
           FROM (SELECT key, count(*) AS n FROM {s}.job_keys
                 GROUP BY key ORDER BY n DESC, key LIMIT 10) AS h),
        (SELECT count(DISTINCT worker) FROM {s}.jobs WHERE state = 'running'),
        (SELECT max(version) FROM {s}.migrations),
        (SELECT count(*) FROM {s}.jobs WHERE state = 'queued' AND not_before > clock_timestamp()),
        (SELECT count(*) FROM {s}.paused_keys)""",
    # For keyed_dispatch.metrics: over the retained jobs, O(their number).
    # Parameters: the negated bucket bounds, ascending (so that width_bucket
    # counts the bounds at or above a value: Prometheus le is inclusive),
    # their number, and how many of the deepest keys. Histograms come back
    # as {bucket index: count}, index 0 to len(bounds) (above the last).
    "metrics": """WITH t AS (
            SELECT extract(epoch FROM started_at - submitted_at)::float8 AS wait,
                   extract(epoch FROM finished_at - started_at)::float8 AS run
              FROM {s}.jobs WHERE started_at IS NOT NULL)
        SELECT
        (SELECT coalesce(json_object_agg(state, n), '{{}}')
           FROM (SELECT state, count(*) AS n FROM {s}.jobs GROUP BY state) AS c),
        (SELECT coalesce(json_agg(json_build_array(error_type, n)), '[]')
           FROM (SELECT coalesce(error_type, '<other>') AS error_type, count(*) AS n FROM {s}.jobs
                 WHERE state = 'failed' GROUP BY 1 ORDER BY n DESC, 1 LIMIT 32) AS f),
        (SELECT coalesce(json_object_agg(i, n), '{{}}')
           FROM (SELECT %s - width_bucket(-wait, %s::float8[]) AS i, count(*) AS n FROM t GROUP BY 1) AS w),
        (SELECT coalesce(sum(wait), 0)::float8 FROM t),
        (SELECT coalesce(json_object_agg(i, n), '{{}}')
           FROM (SELECT %s - width_bucket(-run, %s::float8[]) AS i, count(*) AS n FROM t
                 WHERE run IS NOT NULL GROUP BY 1) AS r),
        (SELECT coalesce(sum(run), 0)::float8 FROM t WHERE run IS NOT NULL),
        (SELECT count(DISTINCT key) FROM {s}.job_keys),
        (SELECT coalesce(json_agg(json_build_array(key, n)), '[]')
           FROM (SELECT key, count(*) AS n FROM {s}.job_keys
                 GROUP BY key ORDER BY n DESC, key LIMIT %s) AS h)""",
    "version": "SELECT max(version) FROM {s}.migrations",
    "create_schema": "CREATE SCHEMA IF NOT EXISTS {s}",
    "create_migrations": (
        "CREATE TABLE IF NOT EXISTS {s}.migrations"
        " (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
    ),
    "applied": "SELECT version FROM {s}.migrations",
    "record_migration": "INSERT INTO {s}.migrations (version) VALUES (%s)",
}


class Statements:
    """The SQL statements for one schema, as attributes (``q.submit``, ...)."""

    def __init__(self, schema: str) -> None:
        check_schema_name(schema)
        self.schema = schema
        for name, template in _STATEMENTS.items():
            setattr(self, name, template.format(s=schema))

    submit: str
    submit_many: str
    requeue: str
    pause: str
    resume: str
    cancel_pending: str
    key_info: str
    dead_letters: str
    cancel: str
    expire: str
    claim: str
    finish_claim: str
    finish: str
    fail: str
    heartbeat: str
    maintain: str
    listen_ready: str
    listen_done: str
    listen_results: str
    results: str
    stats: str
    metrics: str
    version: str
    create_schema: str
    create_migrations: str
    applied: str
    record_migration: str
