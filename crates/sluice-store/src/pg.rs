//! The ledger in PostgreSQL (`[store] database_url`), shared by every replica.
//!
//! This module holds the ledger; the state store (keys, batch ownership, tenants, the audit
//! chain) moves to the same database with it ([`crate::pgstate`], its own migration list). The
//! sync `postgres` client is used from the ledger writer's own thread and from the CLI, never
//! from an async worker.
//!
//! Schema changes are versioned in [`MIGRATIONS`] and applied on connect, inside one transaction
//! holding a transaction-scoped advisory lock, so replicas starting together migrate once. The
//! applied versions are rows of `sluice_migrations`. Tables are created unqualified: they land
//! in the connection's `search_path` (set it in the URL, `?options=-csearch_path%3Dsluice`, to
//! keep the ledger out of `public`).

use crate::StoreError;
use crate::ledger::{LedgerSink, StoredRow};
use postgres::{Client, NoTls};
use std::time::Duration;

/// Postgres schema versions, applied in order. Append only; never edit an applied one.
pub const MIGRATIONS: &[&str] = &[
    // v1: the ledger, with every column the SQLite ledger has reached (its v1-v5), and the row
    // id that makes replayed batches idempotent.
    "CREATE TABLE ledger (
        id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        uid                 TEXT NOT NULL UNIQUE,
        ts_ms               BIGINT NOT NULL,
        request_id          TEXT NOT NULL,
        tenant              TEXT NOT NULL,
        key_id              TEXT NOT NULL,
        feature             TEXT,
        endpoint            TEXT NOT NULL,
        model               TEXT,
        model_served        TEXT,
        streamed            BOOLEAN NOT NULL,
        status              INTEGER NOT NULL,
        outcome             TEXT NOT NULL,
        error_type          TEXT,
        latency_ms          BIGINT NOT NULL,
        ttfb_ms             BIGINT,
        input_tokens        BIGINT NOT NULL,
        output_tokens       BIGINT NOT NULL,
        cache_creation_input_tokens BIGINT NOT NULL,
        cache_creation_5m_input_tokens BIGINT NOT NULL,
        cache_creation_1h_input_tokens BIGINT NOT NULL,
        cache_read_input_tokens BIGINT NOT NULL,
        stop_reason         TEXT,
        upstream            TEXT,
        cost_micros         BIGINT,
        waited_ms           BIGINT NOT NULL DEFAULT 0,
        retries             INTEGER NOT NULL DEFAULT 0,
        provider            TEXT,
        fallback            INTEGER NOT NULL DEFAULT 0
     );
     CREATE INDEX ledger_ts ON ledger (ts_ms);
     CREATE INDEX ledger_tenant_ts ON ledger (tenant, ts_ms);",
    // v2: the output count is an estimate (a stream that ended before its final usage).
    "ALTER TABLE ledger ADD COLUMN usage_estimated BOOLEAN NOT NULL DEFAULT FALSE;",
    "ALTER TABLE ledger ADD COLUMN prompt_cache_added BOOLEAN NOT NULL DEFAULT FALSE;
     ALTER TABLE ledger ADD COLUMN saved_micros BIGINT NOT NULL DEFAULT 0;",
];

/// Advisory lock key serialising migrations (any constant; "sluice" in ASCII).
pub(crate) const MIGRATION_LOCK: i64 = 0x736c_7569_6365;

/// Parse `database_url` (`postgres://user[:password]@host[:port]/db[?options]`) and apply the
/// timeouts Sluice needs: a connect timeout (an unreachable database must not hold the writer
/// for long) and TCP keepalives (a silently dead connection is noticed).
pub fn config(database_url: &str) -> Result<postgres::Config, StoreError> {
    let mut cfg: postgres::Config = database_url.parse().map_err(|e| {
        // The URL may hold a password: say what is wrong without quoting it.
        StoreError::Invalid(format!(
            "store.database_url is not a valid Postgres URL: {e}"
        ))
    })?;
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(Duration::from_secs(5));
    }
    cfg.keepalives(true)
        .keepalives_idle(Duration::from_secs(30))
        .tcp_user_timeout(Duration::from_secs(30));
    if cfg.get_application_name().is_none() {
        cfg.application_name("sluice");
    }
    Ok(cfg)
}

/// Connect and bring the schema up to date.
pub fn connect(cfg: &postgres::Config) -> Result<Client, StoreError> {
    let mut client = cfg.connect(NoTls)?;
    // A statement stuck behind a lock must not stall the writer forever.
    client.batch_execute("SET statement_timeout = '60s'")?;
    migrate(&mut client)?;
    Ok(client)
}

/// Apply the migrations this database lacks. Returns the schema version.
pub fn migrate(client: &mut Client) -> Result<i64, StoreError> {
    apply_migrations(client, "sluice_migrations", MIGRATIONS, "ledger")
}

/// Apply the versions of `migrations` not yet recorded in `table`, in one transaction holding
/// the migration advisory lock (shared by the ledger and state lists, so replicas starting
/// together migrate once and never interleave). Returns the schema version.
pub(crate) fn apply_migrations(
    client: &mut Client,
    table: &str,
    migrations: &[&str],
    what: &str,
) -> Result<i64, StoreError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            version    INTEGER PRIMARY KEY,
            applied_ms BIGINT NOT NULL
         )"
    ))?;
    let current: i32 = tx
        .query_one(
            &format!("SELECT COALESCE(max(version), 0) FROM {table}"),
            &[],
        )?
        .get(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    for (i, sql) in migrations.iter().enumerate() {
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        if version > current {
            tx.batch_execute(sql)?;
            tx.execute(
                &format!("INSERT INTO {table} (version, applied_ms) VALUES ($1, $2)"),
                &[&version, &now],
            )?;
            tracing::info!(version, what, "database migrated");
        }
    }
    tx.commit()?;
    Ok(i64::try_from(migrations.len()).unwrap_or(i64::MAX))
}

/// The Postgres ledger as a [`LedgerSink`]: connects lazily (and again after any error).
pub struct PgSink {
    cfg: postgres::Config,
    /// The connection and its prepared insert (prepared once per connection).
    conn: Option<(Client, postgres::Statement)>,
}

impl PgSink {
    /// A sink for `database_url`; nothing is connected yet.
    pub fn new(database_url: &str) -> Result<Self, StoreError> {
        Ok(Self {
            cfg: config(database_url)?,
            conn: None,
        })
    }
}

impl LedgerSink for PgSink {
    fn ensure_ready(&mut self) -> Result<(), StoreError> {
        if self.conn.as_ref().is_some_and(|(c, _)| !c.is_closed()) {
            return Ok(());
        }
        self.conn = None;
        let mut client = connect(&self.cfg)?;
        let stmt = client.prepare(INSERT)?;
        self.conn = Some((client, stmt));
        Ok(())
    }

    fn insert(&mut self, rows: &[StoredRow]) -> Result<(), StoreError> {
        self.ensure_ready()?;
        let Some((client, stmt)) = self.conn.as_mut() else {
            return Err(StoreError::Invalid("ledger database not connected".into()));
        };
        insert_rows(client, stmt, rows)
    }

    fn reset(&mut self) {
        self.conn = None;
    }
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// One statement per batch: each column travels as one array and `unnest` turns them back into
/// rows, so a batch of any size is one round trip and one prepared statement. `ON CONFLICT DO
/// NOTHING` on the row id makes a replayed batch harmless.
const INSERT: &str = "INSERT INTO ledger (uid, ts_ms, request_id, tenant, key_id, feature,
        endpoint, model, model_served, streamed, status, outcome, error_type, latency_ms,
        ttfb_ms, input_tokens, output_tokens, cache_creation_input_tokens,
        cache_creation_5m_input_tokens, cache_creation_1h_input_tokens, cache_read_input_tokens,
        stop_reason, upstream, cost_micros, waited_ms, retries, provider, fallback,
        usage_estimated, prompt_cache_added, saved_micros)
    SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[],
        $6::text[], $7::text[], $8::text[], $9::text[], $10::bool[], $11::int4[], $12::text[],
        $13::text[], $14::int8[], $15::int8[], $16::int8[], $17::int8[], $18::int8[],
        $19::int8[], $20::int8[], $21::int8[], $22::text[], $23::text[], $24::int8[],
        $25::int8[], $26::int4[], $27::text[], $28::int4[], $29::bool[],
        $30::bool[], $31::int8[])
    ON CONFLICT (uid) DO NOTHING";

fn insert_rows(
    client: &mut Client,
    stmt: &postgres::Statement,
    rows: &[StoredRow],
) -> Result<(), StoreError> {
    let n = rows.len();
    let mut uid = Vec::with_capacity(n);
    let mut ts = Vec::with_capacity(n);
    let mut request_id = Vec::with_capacity(n);
    let mut tenant = Vec::with_capacity(n);
    let mut key_id = Vec::with_capacity(n);
    let mut feature = Vec::with_capacity(n);
    let mut endpoint = Vec::with_capacity(n);
    let mut model = Vec::with_capacity(n);
    let mut model_served = Vec::with_capacity(n);
    let mut streamed = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut outcome = Vec::with_capacity(n);
    let mut error_type = Vec::with_capacity(n);
    let mut latency = Vec::with_capacity(n);
    let mut ttfb = Vec::with_capacity(n);
    let mut input = Vec::with_capacity(n);
    let mut output = Vec::with_capacity(n);
    let mut cc = Vec::with_capacity(n);
    let mut cc5 = Vec::with_capacity(n);
    let mut cc1 = Vec::with_capacity(n);
    let mut cr = Vec::with_capacity(n);
    let mut stop = Vec::with_capacity(n);
    let mut upstream = Vec::with_capacity(n);
    let mut cost = Vec::with_capacity(n);
    let mut waited = Vec::with_capacity(n);
    let mut retries = Vec::with_capacity(n);
    let mut provider = Vec::with_capacity(n);
    let mut fallback = Vec::with_capacity(n);
    let mut estimated = Vec::with_capacity(n);
    let mut pc_added = Vec::with_capacity(n);
    let mut saved = Vec::with_capacity(n);
    for r in rows {
        uid.push(r.uid.as_str());
        ts.push(r.ts_ms);
        request_id.push(r.request_id.as_str());
        tenant.push(r.tenant.as_str());
        key_id.push(r.key_id.as_str());
        feature.push(r.feature.as_deref());
        endpoint.push(r.endpoint.as_str());
        model.push(r.model.as_deref());
        model_served.push(r.model_served.as_deref());
        streamed.push(r.streamed);
        status.push(i32::from(r.status));
        outcome.push(r.outcome.as_str());
        error_type.push(r.error_type.as_deref());
        latency.push(i64_of(r.latency_ms));
        ttfb.push(r.ttfb_ms.map(i64_of));
        input.push(i64_of(r.input_tokens));
        output.push(i64_of(r.output_tokens));
        cc.push(i64_of(r.cache_creation_input_tokens));
        cc5.push(i64_of(r.cache_creation_5m_input_tokens));
        cc1.push(i64_of(r.cache_creation_1h_input_tokens));
        cr.push(i64_of(r.cache_read_input_tokens));
        stop.push(r.stop_reason.as_deref());
        upstream.push(r.upstream.as_deref());
        cost.push(r.cost_micros);
        waited.push(i64_of(r.waited_ms));
        retries.push(i32::try_from(r.retries).unwrap_or(i32::MAX));
        provider.push(r.provider.as_deref());
        fallback.push(i32::from(r.fallback));
        estimated.push(r.usage_estimated);
        pc_added.push(r.prompt_cache_added);
        saved.push(r.saved_micros);
    }
    // One statement is one implicit transaction: the batch is committed whole or not at all.
    client.execute(
        stmt,
        &[
            &uid,
            &ts,
            &request_id,
            &tenant,
            &key_id,
            &feature,
            &endpoint,
            &model,
            &model_served,
            &streamed,
            &status,
            &outcome,
            &error_type,
            &latency,
            &ttfb,
            &input,
            &output,
            &cc,
            &cc5,
            &cc1,
            &cr,
            &stop,
            &upstream,
            &cost,
            &waited,
            &retries,
            &provider,
            &fallback,
            &estimated,
            &pc_added,
            &saved,
        ],
    )?;
    Ok(())
}
