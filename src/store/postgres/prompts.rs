//! The prompt registry's tables on PostgreSQL.

use std::collections::BTreeMap;

use postgres::Row;

use super::PgStore;
use crate::audit::chain::Event;
use crate::prompts::model::{Evaluation, LabelMove, PromptVersion};
use crate::store::prompts::{PromptStore, Pushed};

fn json<T: serde::de::DeserializeOwned>(r: &Row) -> anyhow::Result<T> {
    Ok(serde_json::from_str(&r.try_get::<_, String>(0)?)?)
}

fn version(v: u32) -> i64 {
    i64::from(v)
}

impl PromptStore for PgStore {
    fn push_prompt(
        &self,
        v: &PromptVersion,
        event_for: &dyn Fn(&PromptVersion) -> Event,
    ) -> anyhow::Result<Pushed> {
        self.with_audit(|tx| {
            // Pushes of one prompt take turns, so version numbers never clash.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 1))",
                &[&v.name],
            )?;
            let existing = tx.query_opt(
                "SELECT data FROM prompt_versions WHERE name = $1 AND sha256 = $2",
                &[&v.name, &v.sha256],
            )?;
            if let Some(row) = existing {
                return Ok((Pushed::Existing(json(&row)?), vec![]));
            }
            let last: Option<i64> = tx
                .query_one(
                    "SELECT MAX(version) FROM prompt_versions WHERE name = $1",
                    &[&v.name],
                )?
                .get(0);
            let mut new = v.clone();
            new.version = u32::try_from(last.unwrap_or(0) + 1)?;
            tx.execute(
                "INSERT INTO prompt_versions (name, version, sha256, created_at, data)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &new.name,
                    &version(new.version),
                    &new.sha256,
                    &new.created_at,
                    &serde_json::to_string(&new)?,
                ],
            )?;
            let event = event_for(&new);
            Ok((Pushed::New(new), vec![event]))
        })
    }

    fn prompt_names(&self) -> anyhow::Result<Vec<String>> {
        let rows = self.conn()?.query(
            "SELECT DISTINCT name FROM prompt_versions ORDER BY name",
            &[],
        )?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    fn prompt_versions(&self, name: &str) -> anyhow::Result<Vec<PromptVersion>> {
        let rows = self.conn()?.query(
            "SELECT data FROM prompt_versions WHERE name = $1 ORDER BY version",
            &[&name],
        )?;
        rows.iter().map(json).collect()
    }

    fn prompt_version(&self, name: &str, v: u32) -> anyhow::Result<Option<PromptVersion>> {
        let row = self.conn()?.query_opt(
            "SELECT data FROM prompt_versions WHERE name = $1 AND version = $2",
            &[&name, &version(v)],
        )?;
        row.as_ref().map(json).transpose()
    }

    fn prompt_labels(&self, name: &str) -> anyhow::Result<BTreeMap<String, u32>> {
        let rows = self.conn()?.query(
            "SELECT label, version FROM prompt_labels WHERE name = $1",
            &[&name],
        )?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, u32::try_from(r.try_get::<_, i64>(1)?)?)))
            .collect()
    }

    fn move_label(&self, m: &LabelMove, event: &Event) -> anyhow::Result<bool> {
        self.with_audit(|tx| {
            let current = tx
                .query_opt(
                    "SELECT version FROM prompt_labels WHERE name = $1 AND label = $2 FOR UPDATE",
                    &[&m.name, &m.label],
                )?
                .map(|r| r.try_get::<_, i64>(0))
                .transpose()?;
            if current != m.from.map(version) {
                return Ok((false, vec![]));
            }
            tx.execute(
                "INSERT INTO prompt_labels (name, label, version) VALUES ($1, $2, $3)
                 ON CONFLICT (name, label) DO UPDATE SET version = excluded.version",
                &[&m.name, &m.label, &version(m.to)],
            )?;
            tx.execute(
                "INSERT INTO prompt_label_moves (name, label, at, data) VALUES ($1, $2, $3, $4)",
                &[&m.name, &m.label, &m.at, &serde_json::to_string(m)?],
            )?;
            Ok((true, vec![event.clone()]))
        })
    }

    fn label_history(&self, name: &str) -> anyhow::Result<Vec<LabelMove>> {
        let rows = self.conn()?.query(
            "SELECT data FROM prompt_label_moves WHERE name = $1 ORDER BY seq",
            &[&name],
        )?;
        rows.iter().map(json).collect()
    }

    fn add_evaluation(
        &self,
        name: &str,
        v: u32,
        e: &Evaluation,
        event: &Event,
    ) -> anyhow::Result<bool> {
        self.with_audit(|tx| {
            let found = tx.query_opt(
                "SELECT data FROM prompt_versions WHERE name = $1 AND version = $2 FOR UPDATE",
                &[&name, &version(v)],
            )?;
            let Some(row) = found else {
                return Ok((false, vec![]));
            };
            let mut pv: PromptVersion = json(&row)?;
            pv.evaluations.push(e.clone());
            tx.execute(
                "UPDATE prompt_versions SET data = $3 WHERE name = $1 AND version = $2",
                &[&name, &version(v), &serde_json::to_string(&pv)?],
            )?;
            Ok((true, vec![event.clone()]))
        })
    }
}
