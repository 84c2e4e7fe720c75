//! The schema on PostgreSQL: the same versioned migrations as SQLite's
//! ([`crate::store::migrations::MIGRATIONS`], entry `i` moves version `i` to
//! `i + 1`), in PostgreSQL's dialect. A test keeps the two lists the same
//! length, so a migration is never added to one backend only.

/// Schema changes, in order, numbered as SQLite's.
pub const MIGRATIONS: &[&str] = &[
    "CREATE TABLE action_history (
        fingerprint   TEXT PRIMARY KEY,
        agent         TEXT NOT NULL,
        tool          TEXT NOT NULL,
        shape         TEXT NOT NULL,
        seen          BIGINT NOT NULL,
        first_seen    BIGINT,
        last_seen     BIGINT,
        approved      BIGINT NOT NULL,
        rejected      BIGINT NOT NULL,
        last_decision TEXT
    );",
    "CREATE TABLE approvals (
        id              TEXT PRIMARY KEY,
        state           TEXT NOT NULL,
        agent           TEXT NOT NULL,
        idempotency_key TEXT,
        deadline        BIGINT NOT NULL,
        created_at      BIGINT NOT NULL,
        version         BIGINT NOT NULL,
        data            TEXT NOT NULL,
        body            BYTEA NOT NULL,
        original_body   BYTEA,
        result_body     BYTEA
    );
    CREATE UNIQUE INDEX approvals_idempotency ON approvals(agent, idempotency_key)
        WHERE idempotency_key IS NOT NULL;
    CREATE INDEX approvals_state_deadline ON approvals(state, deadline);
    CREATE TABLE audit (
        seq       BIGINT PRIMARY KEY,
        ts        TEXT NOT NULL,
        actor     TEXT NOT NULL,
        event     TEXT NOT NULL,
        subject   TEXT NOT NULL,
        details   TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    );",
    "ALTER TABLE action_history ADD COLUMN decision_ms_total BIGINT NOT NULL DEFAULT 0;",
    "CREATE INDEX approvals_agent_state ON approvals(agent, state);
     CREATE INDEX approvals_created ON approvals(created_at, id);",
    "ALTER TABLE audit ADD COLUMN mac TEXT;
     CREATE INDEX audit_subject ON audit(subject);
     CREATE TABLE audit_head (
        id   BIGINT PRIMARY KEY CHECK (id = 1),
        seq  BIGINT NOT NULL,
        hash TEXT NOT NULL,
        mac  TEXT
     );
     INSERT INTO audit_head (id, seq, hash)
        SELECT 1, seq, hash FROM audit ORDER BY seq DESC LIMIT 1;",
    "CREATE TABLE sessions (
        id_sha256 TEXT PRIMARY KEY,
        principal TEXT NOT NULL,
        csrf      TEXT NOT NULL,
        last_used BIGINT NOT NULL
     );",
    "CREATE TABLE grants (
        id         TEXT PRIMARY KEY,
        agent      TEXT NOT NULL,
        approval   TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        revoked_at BIGINT,
        data       TEXT NOT NULL
     );
     CREATE INDEX grants_created ON grants(created_at, id);
     CREATE INDEX grants_live ON grants(expires_at) WHERE revoked_at IS NULL;",
    "CREATE TABLE prompt_versions (
        name       TEXT NOT NULL,
        version    BIGINT NOT NULL,
        sha256     TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        data       TEXT NOT NULL,
        PRIMARY KEY (name, version)
     );
     CREATE UNIQUE INDEX prompt_versions_sha ON prompt_versions(name, sha256);
     CREATE TABLE prompt_labels (
        name    TEXT NOT NULL,
        label   TEXT NOT NULL,
        version BIGINT NOT NULL,
        PRIMARY KEY (name, label)
     );
     CREATE TABLE prompt_label_moves (
        seq   BIGSERIAL PRIMARY KEY,
        name  TEXT NOT NULL,
        label TEXT NOT NULL,
        at    BIGINT NOT NULL,
        data  TEXT NOT NULL
     );",
    "CREATE TABLE notify_outbox (seq BIGINT PRIMARY KEY);
     CREATE TABLE notify_deliveries (
        id          BIGSERIAL PRIMARY KEY,
        approval    TEXT NOT NULL,
        channel     TEXT NOT NULL,
        kind        TEXT NOT NULL,
        payload     TEXT NOT NULL,
        created_at  BIGINT NOT NULL,
        attempts    BIGINT NOT NULL DEFAULT 0,
        state       TEXT NOT NULL DEFAULT 'pending',
        next_at     BIGINT NOT NULL,
        lease_until BIGINT NOT NULL DEFAULT 0,
        last_error  TEXT
     );
     CREATE INDEX notify_due ON notify_deliveries(state, next_at);
     CREATE INDEX notify_key ON notify_deliveries(approval, channel, id);
     CREATE TABLE notify_slack (
        approval      TEXT NOT NULL,
        channel       TEXT NOT NULL,
        slack_channel TEXT NOT NULL,
        ts            TEXT NOT NULL,
        PRIMARY KEY (approval, channel)
     );",
    "ALTER TABLE audit ADD COLUMN details_sha256 TEXT;
     CREATE TABLE audit_checkpoint (
        id   BIGINT PRIMARY KEY CHECK (id = 1),
        seq  BIGINT NOT NULL,
        hash TEXT NOT NULL,
        ts   TEXT NOT NULL,
        mac  TEXT
     );",
];

#[cfg(test)]
mod tests {
    #[test]
    fn both_backends_have_the_same_migrations() {
        assert_eq!(
            super::MIGRATIONS.len(),
            crate::store::migrations::MIGRATIONS.len(),
            "a migration must be written for SQLite and PostgreSQL alike"
        );
    }
}
