//! What the prompt registry needs from storage. Every change commits with
//! its audit events in one synced transaction.

use std::collections::BTreeMap;

use crate::audit::chain::Event;
use crate::prompts::model::{Evaluation, LabelMove, PromptVersion};

/// The outcome of pushing a version.
#[derive(Debug, Clone, PartialEq)]
pub enum Pushed {
    /// Stored as a new version (numbered by the store).
    New(PromptVersion),
    /// The same content is already a version of this prompt: nothing stored.
    Existing(PromptVersion),
}

/// Prompt storage.
pub trait PromptStore {
    /// Store `v` as the prompt's next version with the event `event_for`
    /// makes of it — unless a version with the same SHA-256 exists.
    fn push_prompt(
        &self,
        v: &PromptVersion,
        event_for: &dyn Fn(&PromptVersion) -> Event,
    ) -> anyhow::Result<Pushed>;
    /// Every prompt name, sorted.
    fn prompt_names(&self) -> anyhow::Result<Vec<String>>;
    /// Every version of `name`, oldest first.
    fn prompt_versions(&self, name: &str) -> anyhow::Result<Vec<PromptVersion>>;
    /// One version.
    fn prompt_version(&self, name: &str, version: u32) -> anyhow::Result<Option<PromptVersion>>;
    /// The labels of `name` and the versions they point at.
    fn prompt_labels(&self, name: &str) -> anyhow::Result<BTreeMap<String, u32>>;
    /// Move a label if it still points where `m.from` says; `Ok(false)` if
    /// it moved meanwhile.
    fn move_label(&self, m: &LabelMove, event: &Event) -> anyhow::Result<bool>;
    /// Label moves of `name`, oldest first.
    fn label_history(&self, name: &str) -> anyhow::Result<Vec<LabelMove>>;
    /// Attach an evaluation result to a version; `Ok(false)`: no such version.
    fn add_evaluation(
        &self,
        name: &str,
        version: u32,
        e: &Evaluation,
        event: &Event,
    ) -> anyhow::Result<bool>;
}
