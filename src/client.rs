//! `latch approvals …`: the admin API from the command line, for operators
//! and scripts (`LATCH_ADMIN_URL`, `LATCH_TOKEN`; `--json` for machines).

use std::path::Path;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http::{Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

mod prompts;
pub use prompts::{prompt_file, prompts};

/// What the user asked for.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `list --status`.
    pub status: Option<String>,
    /// `approve|modify --comment`.
    pub comment: Option<String>,
    /// `reject|override --reason`.
    pub reason: Option<String>,
    /// `reject --code`.
    pub code: Option<String>,
    /// `modify --body FILE`.
    pub body: Option<std::path::PathBuf>,
    /// Print the server's JSON.
    pub json: bool,
    /// `approve --grant-s`: also grant the same class for this long.
    pub grant_s: Option<u64>,
    /// `approve --grant-args`: arguments the grant is narrowed to.
    pub grant_args: Vec<String>,
    /// `prompts push --name`.
    pub name: Option<String>,
    /// `prompts push -m`.
    pub message: Option<String>,
    /// `prompts show|promote|rollback --label`.
    pub label: Option<String>,
    /// `prompts show --version`.
    pub version: Option<u32>,
}

/// An answer from the admin API.
struct Answer {
    status: u16,
    body: Value,
}

async fn request(method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Answer> {
    let base =
        std::env::var("LATCH_ADMIN_URL").unwrap_or_else(|_| "http://127.0.0.1:8081".to_string());
    let token = std::env::var("LATCH_TOKEN")
        .map_err(|_| anyhow!("set LATCH_TOKEN to your admin bearer token"))?;
    let uri: Uri = format!("{}{path}", base.trim_end_matches('/'))
        .parse()
        .with_context(|| format!("LATCH_ADMIN_URL `{base}` is not a URL"))?;
    let roots = crate::tls::system_roots();
    let ca = std::env::var_os("LATCH_CA_FILE").map(std::path::PathBuf::from);
    let https = crate::tls::https_connector(&roots, ca.as_deref(), None)?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(https);
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(payload)))?;
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("cannot reach the admin API at {base}"))?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    Ok(Answer { status, body })
}

fn ok_or_message(a: Answer) -> anyhow::Result<Value> {
    if (200..300).contains(&a.status) {
        Ok(a.body)
    } else {
        let message = a.body["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| a.body.to_string());
        Err(anyhow!(
            "{} {}: {message}",
            a.status,
            a.body["error"].as_str().unwrap_or("error")
        ))
    }
}

fn ago(ms: i64) -> String {
    let s = (ms - chrono::Utc::now().timestamp_millis()) / 1000;
    match s {
        s if s <= 0 => "due".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

fn signed(a: &Value) -> String {
    let votes: Vec<&str> = a["votes"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter(|v| {
                    v["kind"] == "approve"
                        && v["body_sha256"] == a["body_sha256"]
                        && v["level"] == a["level"]
                })
                .filter_map(|v| v["principal"].as_str())
                .collect()
        })
        .unwrap_or_default();
    let needs: Vec<String> = a["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|r| format!("{}×{}", r["count"], r["role"].as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    format!(
        "{} / {}",
        if votes.is_empty() {
            "-".into()
        } else {
            votes.join(",")
        },
        needs.join("+")
    )
}

fn table(list: &[Value]) -> String {
    let mut out = format!(
        "{:<38} {:<10} {:<9} {:<14} {:<16} {:<8} {}\n",
        "ID", "STATE", "RISK", "AGENT", "TOOL", "DUE IN", "SIGNED / NEEDS"
    );
    for a in list {
        out.push_str(&format!(
            "{:<38} {:<10} {:<9} {:<14} {:<16} {:<8} {}\n",
            a["id"].as_str().unwrap_or("?"),
            a["state"].as_str().unwrap_or("?"),
            a["decision"]["risk"].as_str().unwrap_or("?"),
            a["agent"].as_str().unwrap_or("?"),
            a["tool"].as_str().unwrap_or("?"),
            if a["state"] == "pending" {
                ago(a["deadline_ms"].as_i64().unwrap_or(0))
            } else {
                "-".into()
            },
            signed(a),
        ));
    }
    out
}

fn details(a: &Value) -> String {
    let reasons: Vec<&str> = a["decision"]["reasons"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    format!(
        "id:        {}\nstate:     {}\nagent:     {}\ncall:      {} {} ({} via route {})\nrisk:      {} ({})\nreasons:   {}\nagent says: {}\nsigned:    {}\noutcome:   {}\nbody:\n{}\n",
        a["id"].as_str().unwrap_or("?"),
        a["state"].as_str().unwrap_or("?"),
        a["agent"].as_str().unwrap_or("?"),
        a["method"].as_str().unwrap_or("?"),
        a["path"].as_str().unwrap_or("?"),
        a["tool"].as_str().unwrap_or("?"),
        a["route"].as_str().unwrap_or("?"),
        a["decision"]["risk"].as_str().unwrap_or("?"),
        a["decision"]["code"].as_str().unwrap_or("?"),
        reasons.join("; "),
        a["reason"].as_str().unwrap_or("-"),
        signed(a),
        a["outcome"].as_str().unwrap_or("-"),
        serde_json::to_string_pretty(&a["body"]).unwrap_or_default(),
    ) + &promotion_diff(a)
}

/// For a prompt promotion, the change it would make (added by `show`).
fn promotion_diff(a: &Value) -> String {
    let Some(lines) = a["prompt_diff"].as_array() else {
        return String::new();
    };
    let text: Vec<&str> = lines.iter().filter_map(Value::as_str).collect();
    format!(
        "change to {} of {}:\n{}\n",
        a["body"]["label"].as_str().unwrap_or("?"),
        a["body"]["name"].as_str().unwrap_or("?"),
        text.join("\n")
    )
}

/// The lines a prompt promotion changes: the diff from the version the
/// label holds, or the whole new template for a new label.
async fn prompt_change(body: &Value) -> anyhow::Result<Value> {
    let name = body["name"].as_str().unwrap_or_default();
    let lines = match (body["from"].as_u64(), body["to"].as_u64()) {
        (Some(from), Some(to)) => {
            let path = format!("/api/v1/prompts/{name}/diff?from={from}&to={to}");
            ok_or_message(request(Method::GET, &path, None).await?)?["lines"].clone()
        }
        (None, Some(to)) => {
            let path = format!("/api/v1/prompts/{name}/versions/{to}");
            let v = ok_or_message(request(Method::GET, &path, None).await?)?;
            let template = v["template"].as_str().unwrap_or_default();
            json!(template
                .lines()
                .map(|l| format!("+ {l}"))
                .collect::<Vec<_>>())
        }
        _ => Value::Null,
    };
    Ok(lines)
}

/// Run `latch approvals <verb> [ID]`; returns what to print.
pub async fn approvals(verb: &str, id: Option<&str>, o: &Options) -> anyhow::Result<String> {
    let need_id = || id.ok_or_else(|| anyhow!("`latch approvals {verb}` needs an approval ID"));
    let (value, human): (Value, fn(&Value) -> String) = match verb {
        "list" => {
            let base = match &o.status {
                Some(s) => format!("/api/v1/approvals?status={s}&limit=1000"),
                None => "/api/v1/approvals?limit=1000".to_string(),
            };
            // Follow every page: a listing that silently stops is how a
            // request gets lost in a flood.
            let mut all = Vec::new();
            let mut cursor: Option<String> = None;
            let total = loop {
                let path = match &cursor {
                    Some(c) => format!("{base}&cursor={c}"),
                    None => base.clone(),
                };
                let mut page = ok_or_message(request(Method::GET, &path, None).await?)?;
                if let Some(list) = page["approvals"].as_array_mut() {
                    all.append(list);
                }
                cursor = page["next_cursor"].as_str().map(str::to_string);
                if cursor.is_none() {
                    break page["total"].clone();
                }
            };
            let v = json!({"approvals": all, "total": total});
            (v, |v| {
                table(v["approvals"].as_array().map(Vec::as_slice).unwrap_or(&[]))
            })
        }
        "show" => {
            let mut v = ok_or_message(
                request(
                    Method::GET,
                    &format!("/api/v1/approvals/{}", need_id()?),
                    None,
                )
                .await?,
            )?;
            if v["route"] == crate::prompts::ROUTE {
                v["prompt_diff"] = prompt_change(&v["body"]).await?;
            }
            (v, details)
        }
        "approve" | "reject" | "modify" | "override" => {
            let body = match verb {
                "approve" => {
                    let grant = match o.grant_s {
                        Some(ttl_s) => json!({"ttl_s": ttl_s, "class_args": o.grant_args}),
                        None if o.grant_args.is_empty() => Value::Null,
                        None => return Err(anyhow!("--grant-args needs --grant-s")),
                    };
                    json!({"comment": o.comment, "grant": grant})
                }
                "reject" => {
                    json!({"reason": o.reason.clone().ok_or_else(|| anyhow!("reject needs --reason"))?, "code": o.code})
                }
                "override" => {
                    json!({"reason": o.reason.clone().ok_or_else(|| anyhow!("override needs --reason"))?})
                }
                _ => {
                    let file = o
                        .body
                        .as_deref()
                        .ok_or_else(|| anyhow!("modify needs --body FILE"))?;
                    json!({"body": read_json(file)?, "comment": o.comment})
                }
            };
            let path = format!("/api/v1/approvals/{}/{verb}", need_id()?);
            let v = ok_or_message(request(Method::POST, &path, Some(body)).await?)?;
            (v, |v| {
                format!(
                    "{} is now {}\n",
                    v["id"].as_str().unwrap_or("?"),
                    v["state"].as_str().unwrap_or("?")
                )
            })
        }
        other => {
            return Err(anyhow!(
            "unknown approvals command `{other}` (list, show, approve, reject, modify, override)"
        ))
        }
    };
    output(o, &value, human)
}

/// The server's JSON with `--json`, else the human form of it.
fn output(o: &Options, value: &Value, human: fn(&Value) -> String) -> anyhow::Result<String> {
    Ok(if o.json {
        format!("{}\n", serde_json::to_string_pretty(value)?)
    } else {
        human(value)
    })
}

fn grant_table(v: &Value) -> String {
    let mut out = format!(
        "{:<46} {:<8} {:<14} {:<16} {:<8} {:<8} {}\n",
        "ID", "STATUS", "AGENT", "TOOL", "RISK", "LEFT", "NARROWED TO / GRANTED BY"
    );
    for g in v["grants"].as_array().into_iter().flatten() {
        let left = match g["status"].as_str() {
            Some("live") => ago(g["expires_at"].as_i64().unwrap_or(0)),
            _ => "-".into(),
        };
        let by: Vec<&str> = g["granted_by"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push_str(&format!(
            "{:<46} {:<8} {:<14} {:<16} {:<8} {:<8} {} / {}\n",
            g["id"].as_str().unwrap_or("?"),
            g["status"].as_str().unwrap_or("?"),
            g["agent"].as_str().unwrap_or("?"),
            g["tool"].as_str().unwrap_or("?"),
            g["risk"].as_str().unwrap_or("?"),
            left,
            g["narrow"],
            by.join(",")
        ));
    }
    out
}

/// Run `latch grants <verb> [ID]`; returns what to print.
pub async fn grants(verb: &str, id: Option<&str>, o: &Options) -> anyhow::Result<String> {
    let (value, human): (Value, fn(&Value) -> String) = match verb {
        "list" => {
            let status = o.status.as_deref().unwrap_or("live");
            let path = format!("/api/v1/grants?status={status}&limit=1000");
            let v = ok_or_message(request(Method::GET, &path, None).await?)?;
            (v, grant_table)
        }
        "revoke" => {
            let id = id.ok_or_else(|| anyhow!("`latch grants revoke` needs a grant ID"))?;
            let path = format!("/api/v1/grants/{id}");
            let body = json!({"reason": o.reason});
            let v = ok_or_message(request(Method::DELETE, &path, Some(body)).await?)?;
            (v, |v| {
                format!(
                    "{} is now {}\n",
                    v["id"].as_str().unwrap_or("?"),
                    v["status"].as_str().unwrap_or("?")
                )
            })
        }
        other => return Err(anyhow!("unknown grants command `{other}` (list, revoke)")),
    };
    output(o, &value, human)
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}:{}: not JSON: {e}", path.display(), e.line()))
}
