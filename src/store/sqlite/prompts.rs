//! The prompt registry's tables.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};

use super::SqliteStore;
use crate::audit::chain::Event;
use crate::prompts::model::{Evaluation, LabelMove, PromptVersion};
use crate::store::prompts::{PromptStore, Pushed};

fn json<T: serde::de::DeserializeOwned>(r: &rusqlite::Row<'_>) -> rusqlite::Result<T> {
    let data: String = r.get(0)?;
    serde_json::from_str(&data).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

impl PromptStore for SqliteStore {
    fn push_prompt(
        &self,
        v: &PromptVersion,
        event_for: &dyn Fn(&PromptVersion) -> Event,
    ) -> anyhow::Result<Pushed> {
        self.with_audit(|tx| {
            let existing: Option<PromptVersion> = tx
                .query_row(
                    "SELECT data FROM prompt_versions WHERE name = ?1 AND sha256 = ?2",
                    params![v.name, v.sha256],
                    json,
                )
                .optional()?;
            if let Some(e) = existing {
                return Ok((Pushed::Existing(e), vec![]));
            }
            let last: Option<u32> = tx.query_row(
                "SELECT MAX(version) FROM prompt_versions WHERE name = ?1",
                params![v.name],
                |r| r.get(0),
            )?;
            let mut new = v.clone();
            new.version = last.unwrap_or(0) + 1;
            tx.execute(
                "INSERT INTO prompt_versions (name, version, sha256, created_at, data)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    new.name,
                    new.version,
                    new.sha256,
                    new.created_at,
                    serde_json::to_string(&new)?
                ],
            )?;
            let event = event_for(&new);
            Ok((Pushed::New(new), vec![event]))
        })
    }

    fn prompt_names(&self) -> anyhow::Result<Vec<String>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT DISTINCT name FROM prompt_versions ORDER BY name")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    fn prompt_versions(&self, name: &str) -> anyhow::Result<Vec<PromptVersion>> {
        let conn = self.conn()?;
        let mut stmt =
            conn.prepare("SELECT data FROM prompt_versions WHERE name = ?1 ORDER BY version")?;
        let rows = stmt.query_map(params![name], json)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    fn prompt_version(&self, name: &str, version: u32) -> anyhow::Result<Option<PromptVersion>> {
        let conn = self.conn()?;
        conn.query_row(
            "SELECT data FROM prompt_versions WHERE name = ?1 AND version = ?2",
            params![name, version],
            json,
        )
        .optional()
        .map_err(Into::into)
    }

    fn prompt_labels(&self, name: &str) -> anyhow::Result<BTreeMap<String, u32>> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT label, version FROM prompt_labels WHERE name = ?1")?;
        let rows = stmt.query_map(params![name], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(Into::into)
    }

    fn move_label(&self, m: &LabelMove, event: &Event) -> anyhow::Result<bool> {
        self.with_audit(|tx| {
            let current: Option<u32> = tx
                .query_row(
                    "SELECT version FROM prompt_labels WHERE name = ?1 AND label = ?2",
                    params![m.name, m.label],
                    |r| r.get(0),
                )
                .optional()?;
            if current != m.from {
                return Ok((false, vec![]));
            }
            tx.execute(
                "INSERT INTO prompt_labels (name, label, version) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name, label) DO UPDATE SET version = excluded.version",
                params![m.name, m.label, m.to],
            )?;
            tx.execute(
                "INSERT INTO prompt_label_moves (name, label, at, data) VALUES (?1, ?2, ?3, ?4)",
                params![m.name, m.label, m.at, serde_json::to_string(m)?],
            )?;
            Ok((true, vec![event.clone()]))
        })
    }

    fn label_history(&self, name: &str) -> anyhow::Result<Vec<LabelMove>> {
        let conn = self.conn()?;
        let mut stmt =
            conn.prepare("SELECT data FROM prompt_label_moves WHERE name = ?1 ORDER BY seq")?;
        let rows = stmt.query_map(params![name], json)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(Into::into)
    }

    fn add_evaluation(
        &self,
        name: &str,
        version: u32,
        e: &Evaluation,
        event: &Event,
    ) -> anyhow::Result<bool> {
        self.with_audit(|tx| {
            let found: Option<PromptVersion> = tx
                .query_row(
                    "SELECT data FROM prompt_versions WHERE name = ?1 AND version = ?2",
                    params![name, version],
                    json,
                )
                .optional()?;
            let Some(mut v) = found else {
                return Ok((false, vec![]));
            };
            v.evaluations.push(e.clone());
            tx.execute(
                "UPDATE prompt_versions SET data = ?3 WHERE name = ?1 AND version = ?2",
                params![name, version, serde_json::to_string(&v)?],
            )?;
            Ok((true, vec![event.clone()]))
        })
    }
}
