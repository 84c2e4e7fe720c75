//! `latch prompts …`: the prompt registry from the command line.

use std::path::Path;

use anyhow::{anyhow, Context};
use http::Method;
use serde_json::{json, Value};

use super::{ok_or_message, output, request, Options};

/// A prompt file: optional TOML front matter between `---` lines
/// (`variables`, `message`, `name`, `[config]`, `[[checks]]`), then the template.
pub fn prompt_file(
    path: &Path,
    name: Option<&str>,
    message: Option<&str>,
) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let (front, template) = match text.strip_prefix("---\n") {
        Some(rest) => match rest.split_once("\n---\n") {
            Some((front, body)) => (front, body.to_string()),
            None => match rest.strip_suffix("\n---") {
                Some(front) => (front, String::new()),
                None => {
                    return Err(anyhow!(
                        "{}: front matter opened with `---` is never closed",
                        path.display()
                    ))
                }
            },
        },
        None => ("", text.clone()),
    };
    let table: toml::Table =
        toml::from_str(front).map_err(|e| anyhow!("{}: front matter: {e}", path.display()))?;
    let mut doc = serde_json::to_value(&table)?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("prompt");
    let name = name
        .map(str::to_string)
        .or_else(|| doc["name"].as_str().map(str::to_string))
        .unwrap_or_else(|| stem.to_string());
    doc["name"] = json!(name);
    doc["template"] = json!(template);
    if let Some(m) = message {
        doc["message"] = json!(m);
    }
    Ok(doc)
}

fn prompt_table(v: &Value) -> String {
    let mut out = format!(
        "{:<28} {:<8} {:<14} {}\n",
        "NAME", "LATEST", "AUTHOR", "LABELS"
    );
    for p in v["prompts"].as_array().into_iter().flatten() {
        let labels: Vec<String> = p["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(l, v)| format!("{l}→v{v}"))
            .collect();
        out.push_str(&format!(
            "{:<28} {:<8} {:<14} {}\n",
            p["name"].as_str().unwrap_or("?"),
            format!("v{}", p["latest"]["version"]),
            p["latest"]["author"].as_str().unwrap_or("?"),
            labels.join(" ")
        ));
    }
    out
}

fn history_table(v: &Value) -> String {
    let mut out = String::from("VERSIONS\n");
    for x in v["versions"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  v{:<4} {:<14} checks {}/{} {}\n",
            x["version"],
            x["author"].as_str().unwrap_or("?"),
            x["checks"]["passed"],
            x["checks"]["passed"].as_u64().unwrap_or(0)
                + x["checks"]["failed"].as_u64().unwrap_or(0),
            x["message"].as_str().unwrap_or("")
        ));
    }
    out.push_str("LABEL MOVES\n");
    for m in v["history"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "  {:<12} {} → v{} by {}{}{}\n",
            m["label"].as_str().unwrap_or("?"),
            m["from"]
                .as_u64()
                .map_or("-".to_string(), |f| format!("v{f}")),
            m["to"],
            m["by"].as_str().unwrap_or("?"),
            if m["rollback"] == true {
                " (rollback)"
            } else {
                ""
            },
            m["approval"]
                .as_str()
                .map(|a| format!(" approval {a}"))
                .unwrap_or_default()
        ));
    }
    for p in v["pending"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "PENDING {} → v{}: approval {}\n",
            p["label"].as_str().unwrap_or("?"),
            p["to_version"],
            p["approval_id"].as_str().unwrap_or("?")
        ));
    }
    out
}

fn moved_line(v: &Value) -> String {
    match v["status"].as_str() {
        Some("pending") => format!(
            "held for approval: {} (latch approvals show {})\n",
            v["approval_id"].as_str().unwrap_or("?"),
            v["approval_id"].as_str().unwrap_or("?")
        ),
        _ => format!(
            "{} of {} now points at v{}\n",
            v["moved"]["label"].as_str().unwrap_or("?"),
            v["moved"]["name"].as_str().unwrap_or("?"),
            v["moved"]["to"]
        ),
    }
}

/// Run `latch prompts <verb> …`; returns what to print.
pub async fn prompts(verb: &str, args: &[&str], o: &Options) -> anyhow::Result<String> {
    let arg = |i: usize, what: &str| {
        args.get(i)
            .copied()
            .ok_or_else(|| anyhow!("`latch prompts {verb}` needs {what}"))
    };
    let label = || {
        o.label
            .clone()
            .ok_or_else(|| anyhow!("`latch prompts {verb}` needs --label"))
    };
    let (value, human): (Value, fn(&Value) -> String) = match verb {
        "push" => {
            let file = arg(0, "a prompt FILE")?;
            let doc = prompt_file(Path::new(file), o.name.as_deref(), o.message.as_deref())?;
            let v = ok_or_message(request(Method::POST, "/api/v1/prompts", Some(doc)).await?)?;
            (v, |v| {
                let failed: Vec<&str> = v["check_results"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["passed"] == false)
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                format!(
                    "{} v{} {} ({}){}\n",
                    v["name"].as_str().unwrap_or("?"),
                    v["version"],
                    if v["created"] == true { "pushed" } else { "unchanged: same content as" },
                    v["sha256"].as_str().map(|s| &s[..12.min(s.len())]).unwrap_or("?"),
                    if failed.is_empty() { String::new() } else { format!("; failing checks: {}", failed.join(", ")) }
                )
            })
        }
        "list" => (
            ok_or_message(request(Method::GET, "/api/v1/prompts", None).await?)?,
            prompt_table,
        ),
        "show" => {
            let name = arg(0, "a prompt NAME")?;
            let version = match (o.version, &o.label) {
                (Some(v), _) => v,
                (None, l) => {
                    let label = l.clone().unwrap_or_else(|| "production".into());
                    let p = ok_or_message(
                        request(Method::GET, &format!("/api/v1/prompts/{name}"), None).await?,
                    )?;
                    p["labels"][&label]
                        .as_u64()
                        .and_then(|v| u32::try_from(v).ok())
                        .ok_or_else(|| anyhow!("{name} has no label {label:?}"))?
                }
            };
            let path = format!("/api/v1/prompts/{name}/versions/{version}");
            (ok_or_message(request(Method::GET, &path, None).await?)?, |v| {
                format!(
                    "{} v{} by {} ({})\nvariables: {}\nconfig: {}\n---\n{}\n",
                    v["name"].as_str().unwrap_or("?"),
                    v["version"],
                    v["author"].as_str().unwrap_or("?"),
                    v["sha256"].as_str().unwrap_or("?"),
                    v["variables"],
                    v["config"],
                    v["template"].as_str().unwrap_or("")
                )
            })
        }
        "diff" => {
            let (name, a, b) = (arg(0, "NAME A B")?, arg(1, "NAME A B")?, arg(2, "NAME A B")?);
            let path = format!("/api/v1/prompts/{name}/diff?from={a}&to={b}");
            (ok_or_message(request(Method::GET, &path, None).await?)?, |v| {
                let lines: Vec<&str> = v["lines"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                format!("+{} -{}\n{}\n", v["added"], v["removed"], lines.join("\n"))
            })
        }
        "promote" => {
            let (name, version) = (arg(0, "NAME VERSION")?, arg(1, "NAME VERSION")?);
            let version: u32 = version
                .parse()
                .map_err(|_| anyhow!("VERSION must be a number, not {version:?}"))?;
            let path = format!("/api/v1/prompts/{name}/labels/{}", label()?);
            let body = json!({"version": version, "reason": o.reason});
            (ok_or_message(request(Method::POST, &path, Some(body)).await?)?, moved_line)
        }
        "rollback" => {
            let name = arg(0, "a prompt NAME")?;
            let path = format!("/api/v1/prompts/{name}/labels/{}/rollback", label()?);
            let body = json!({"reason": o.reason});
            (ok_or_message(request(Method::POST, &path, Some(body)).await?)?, moved_line)
        }
        "history" => {
            let name = arg(0, "a prompt NAME")?;
            let path = format!("/api/v1/prompts/{name}");
            (ok_or_message(request(Method::GET, &path, None).await?)?, history_table)
        }
        other => {
            return Err(anyhow!(
                "unknown prompts command `{other}` (push, list, show, diff, promote, rollback, history)"
            ))
        }
    };
    output(o, &value, human)
}
