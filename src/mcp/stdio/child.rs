//! A session's child process: started with the session's `initialize`,
//! fed newline-delimited JSON-RPC, its answers matched to the requests
//! waiting for them, started again after a back-off when it dies.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, watch};

use super::{Session, Shared};
use crate::mcp as wire;

/// Time a child has to answer `initialize`.
const INIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Longest a request waits for the child's answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest back-off between restarts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A child process and what waits on it.
pub(super) struct Proc {
    stdin: ChildStdin,
    pending: Arc<DashMap<String, oneshot::Sender<Value>>>,
    alive: watch::Receiver<bool>,
    _child: Child,
}

/// Start the child and hand it the session's `initialize` (and the
/// client's `initialized`, on a restart); its answer to `initialize`.
pub(super) async fn spawn(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
) -> Result<(Proc, Value), String> {
    let (program, args) = shared.command.split_first().ok_or("empty command")?;
    let mut child = Command::new(program)
        .args(args)
        .current_dir(&shared.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    if let Some(stderr) = child.stderr.take() {
        let route = shared.route.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                tracing::info!(route = %route, stream = "stderr", "{line}");
            }
        });
    }
    let pending: Arc<DashMap<String, oneshot::Sender<Value>>> = Arc::new(DashMap::new());
    let (alive_tx, alive) = watch::channel(true);
    {
        let pending = pending.clone();
        let events = session.events.clone();
        let route = shared.route.clone();
        let mut stop = shared.stop.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            loop {
                let line = tokio::select! {
                    l = lines.next_line() => l,
                    _ = stop.changed() => break,
                };
                let Ok(Some(line)) = line else { break };
                let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                    tracing::warn!(route = %route, "stdio MCP server wrote a line that is not JSON");
                    continue;
                };
                let is_response = msg.get("method").is_none();
                match msg.get("id").map(Value::to_string) {
                    Some(key) if is_response => {
                        if let Some((_, tx)) = pending.remove(&key) {
                            let _ = tx.send(msg);
                        }
                    }
                    _ => {
                        let _ = events.send(msg);
                    }
                }
            }
            let _ = alive_tx.send(false);
            // Whatever was waiting will not be answered.
            let keys: Vec<String> = pending.iter().map(|e| e.key().clone()).collect();
            for k in keys {
                if let Some((_, tx)) = pending.remove(&k) {
                    let id: Value = serde_json::from_str(&k).unwrap_or(Value::Null);
                    let _ = tx.send(wire::error(
                        Some(&id),
                        wire::INTERNAL_ERROR,
                        "the stdio MCP server exited during the call",
                        None,
                    ));
                }
            }
            tracing::warn!(route = %route, "stdio MCP server exited");
        });
    }
    let mut proc = Proc {
        stdin,
        pending,
        alive,
        _child: child,
    };
    let init_id = session.init.get("id").cloned().unwrap_or(Value::Null);
    let answer = tokio::time::timeout(INIT_TIMEOUT, exchange(&mut proc, &session.init, &init_id))
        .await
        .map_err(|_| "no answer to initialize in time".to_string())??;
    let initialized = session.initialized.lock().ok().and_then(|s| s.clone());
    if let Some(note) = initialized {
        write(&mut proc, &note).await?;
    }
    Ok((proc, answer))
}

/// Write `msg` and wait for the response to `id`.
async fn exchange(proc: &mut Proc, msg: &Value, id: &Value) -> Result<Value, String> {
    let (tx, rx) = oneshot::channel();
    proc.pending.insert(id.to_string(), tx);
    write(proc, msg).await?;
    rx.await
        .map_err(|_| "the stdio MCP server went away".to_string())
}

async fn write(proc: &mut Proc, msg: &Value) -> Result<(), String> {
    let mut line = msg.to_string().into_bytes();
    line.push(b'\n');
    proc.stdin
        .write_all(&line)
        .await
        .map_err(|e| e.to_string())?;
    proc.stdin.flush().await.map_err(|e| e.to_string())
}

/// The session's child, started again (after the back-off) if it died.
async fn live<'a>(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    slot: &'a mut tokio::sync::MutexGuard<'_, Option<Proc>>,
) -> Result<&'a mut Proc, String> {
    let dead = slot.as_ref().is_none_or(|p| !*p.alive.borrow());
    if dead {
        let wait = {
            let b = session.backoff.lock().map_err(|_| "poisoned")?;
            b.1.saturating_duration_since(Instant::now())
        };
        if !wait.is_zero() {
            return Err(format!(
                "the stdio MCP server is restarting (next try in {} ms)",
                wait.as_millis()
            ));
        }
        {
            let mut b = session.backoff.lock().map_err(|_| "poisoned")?;
            let next = (b.0 * 2).clamp(Duration::from_millis(250), MAX_BACKOFF);
            *b = (next, Instant::now() + next);
        }
        tracing::info!(route = %shared.route, "starting the stdio MCP server again");
        let (proc, _) = spawn(shared, session).await?;
        **slot = Some(proc);
    }
    slot.as_mut().ok_or_else(|| "no process".to_string())
}

pub(super) async fn send(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    msg: &Value,
) -> Result<(), String> {
    let mut slot = session.child.lock().await;
    let proc = live(shared, session, &mut slot).await?;
    write(proc, msg).await
}

pub(super) async fn call(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    msg: &Value,
    id: &Value,
) -> Value {
    let rx = {
        let mut slot = session.child.lock().await;
        let proc = match live(shared, session, &mut slot).await {
            Ok(p) => p,
            Err(e) => return wire::error(Some(id), wire::INTERNAL_ERROR, &e, None),
        };
        let (tx, rx) = oneshot::channel();
        proc.pending.insert(id.to_string(), tx);
        if let Err(e) = write(proc, msg).await {
            proc.pending.remove(&id.to_string());
            return wire::error(
                Some(id),
                wire::INTERNAL_ERROR,
                &format!("writing to the stdio MCP server failed: {e}"),
                None,
            );
        }
        rx
    };
    match tokio::time::timeout(CALL_TIMEOUT, rx).await {
        Ok(Ok(answer)) => {
            // A healthy answer resets the back-off.
            if let Ok(mut b) = session.backoff.lock() {
                b.0 = Duration::ZERO;
            }
            answer
        }
        Ok(Err(_)) => wire::error(
            Some(id),
            wire::INTERNAL_ERROR,
            "the stdio MCP server went away",
            None,
        ),
        Err(_) => wire::error(
            Some(id),
            wire::INTERNAL_ERROR,
            "the stdio MCP server did not answer in time",
            None,
        ),
    }
}
