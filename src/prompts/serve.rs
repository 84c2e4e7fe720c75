//! Serving prompts to apps and agents: the version a label points at, from
//! a memory cache that every label move clears, and rendering it.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::model::PromptVersion;
use super::{check_name, template, PromptError, Registry};

/// A label's version, ready to serve.
pub struct Served {
    /// The version.
    pub version: PromptVersion,
    /// `ETag` (quoted SHA-256).
    pub etag: String,
    /// The JSON document.
    pub json: Bytes,
}

impl Registry {
    /// The version `label` points at, for apps and agents (memory-cached).
    pub async fn serve(&self, name: &str, label: &str) -> Result<Arc<Served>, PromptError> {
        let key = (name.to_string(), label.to_string());
        if let Some(s) = self.0.cache.0.get(&key) {
            return Ok(s.clone());
        }
        check_name("prompt name", name)?;
        check_name("label", label)?;
        let n = name.to_string();
        let l = label.to_string();
        let version = self
            .run(move |s| {
                let Some(v) = s.prompt_labels(&n)?.get(&l).copied() else {
                    return Ok(None);
                };
                s.prompt_version(&n, v)
            })
            .await?
            .ok_or_else(|| PromptError::NotFound(format!("{name} has no label {label:?}")))?;
        let doc = json!({"name": version.name, "version": version.version, "label": label,
                         "template": version.template, "variables": version.variables,
                         "config": version.config, "sha256": version.sha256});
        let served = Arc::new(Served {
            etag: format!("\"{}\"", version.sha256),
            json: Bytes::from(doc.to_string()),
            version,
        });
        self.0.cache.0.insert(key, served.clone());
        Ok(served)
    }

    /// Render `label`'s version with `vars`.
    pub async fn render(
        &self,
        name: &str,
        label: &str,
        vars: &BTreeMap<String, String>,
    ) -> Result<String, PromptError> {
        let served = self.serve(name, label).await?;
        template::render(&served.version.template, vars).map_err(PromptError::Unrenderable)
    }
}
