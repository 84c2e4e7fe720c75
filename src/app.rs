//! The shared state handle and the start-up sequence that wires listeners,
//! store, history and policy together.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use anyhow::{anyhow, Context};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, StoreConfig};
use crate::history::History;
use crate::identity::Directory;
use crate::policy::{Evaluator, PolicySet};
use crate::proxy::upstream::Route;
use crate::server::{self, ListenerOptions};
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use crate::telemetry::Metrics;

/// Everything a request needs, behind one `Arc`.
pub struct Inner {
    /// Validated config.
    pub config: Config,
    /// Principals.
    pub directory: Arc<Directory>,
    /// Routes with their clients.
    pub routes: Vec<Route>,
    policy: RwLock<Arc<PolicySet>>,
    /// Threads that evaluate policies, off the async workers.
    pub evaluators: crate::policy::pool::Evaluators,
    /// Action history.
    pub history: History,
    /// Metrics.
    pub metrics: Metrics,
    /// Durable store.
    pub store: Arc<dyn Store>,
    /// Writer for allow/deny decision records.
    pub audit: crate::audit::AuditLog,
    /// Wake-ups for held calls.
    pub waiters: crate::gate::Waiters,
    /// Outcome of the latest policy reload.
    pub policy_status: std::sync::Mutex<PolicyStatus>,
    /// Failed-authentication counts (429 past the limit).
    pub throttle: crate::throttle::Throttle,
    /// Dashboard sessions.
    pub sessions: crate::admin::session::Sessions,
    /// Approval changes, for the dashboard's live updates (JSON `{id, state}`).
    pub events: tokio::sync::broadcast::Sender<String>,
}

/// What the latest policy reload did (shown on `/readyz`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PolicyStatus {
    /// Successful reloads since start.
    pub reloads: u64,
    /// Why the latest reload was refused, while the previous set keeps deciding.
    pub last_error: Option<String>,
    /// RFC 3339 time of the latest reload attempt.
    pub last_attempt: Option<String>,
}

/// Cheap-to-clone handle to the running gate.
#[derive(Clone)]
pub struct Latch(pub Arc<Inner>);

impl std::ops::Deref for Latch {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// Open the configured store.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &config.store {
        StoreConfig::Sqlite(path) => Arc::new(SqliteStore::open(path, config.audit.key.clone())?),
        StoreConfig::SqliteMemory => Arc::new(SqliteStore::memory(config.audit.key.clone())?),
    })
}

impl Latch {
    /// Open the store, load history, compile the policies and build routes.
    pub fn new(config: Config) -> anyhow::Result<Latch> {
        let store = open_store(&config)?;
        let policy = PolicySet::load(
            &config.policy.dir,
            &config.policy.entrypoint,
            config.policy.timeout,
        )?;
        let metrics = Metrics::new()?;
        metrics.set_policy(policy.hash(), evaluator_name(policy.evaluator()));
        let needs_system_roots = config
            .routes
            .iter()
            .any(|r| r.upstream.scheme_str() == Some("https"));
        let roots = if needs_system_roots {
            crate::tls::system_roots()
        } else {
            rustls::RootCertStore::empty()
        };
        let routes = config
            .routes
            .iter()
            .map(|r| Route::new(r.clone(), &roots).with_context(|| format!("route {}", r.name)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let history = History::open(store.clone()).context("loading action history")?;
        let audit = crate::audit::AuditLog::start(store.clone(), metrics.audit_write.clone())
            .context("starting the audit writer")?;
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let evaluators = crate::policy::pool::Evaluators::start(threads)
            .context("starting the policy evaluators")?;
        let directory = Arc::new(Directory::new(&config.principals));
        let sessions = crate::admin::session::Sessions::new(store.clone(), directory.clone());
        Ok(Latch(Arc::new(Inner {
            evaluators,
            directory: directory.clone(),
            routes,
            policy: RwLock::new(Arc::new(policy)),
            history,
            metrics,
            store,
            audit,
            waiters: crate::gate::Waiters::default(),
            policy_status: std::sync::Mutex::new(PolicyStatus::default()),
            sessions,
            throttle: Default::default(),
            events: tokio::sync::broadcast::channel(1024).0,
            config,
        })))
    }

    /// Evaluate `input` against the active policy set, off the async
    /// workers and within its time limit; records the evaluation metrics.
    pub async fn evaluate(
        &self,
        input: regorus::Value,
    ) -> (Arc<PolicySet>, crate::policy::Evaluation) {
        let policy = self.policy();
        let eval = self.evaluators.evaluate(policy.clone(), input).await;
        self.metrics.policy_eval.observe(eval.elapsed.as_secs_f64());
        if let Some(err) = &eval.error {
            let reason = eval
                .decision
                .reasons
                .first()
                .map(String::as_str)
                .unwrap_or("error");
            self.metrics
                .policy_errors
                .with_label_values(&[reason])
                .inc();
            tracing::warn!(error = %err, policy = policy.hash(), "policy failed; denying");
        }
        (policy, eval)
    }

    /// The active policy set.
    pub fn policy(&self) -> Arc<PolicySet> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replace the active policy set whole.
    pub fn set_policy(&self, set: PolicySet) {
        self.metrics
            .set_policy(set.hash(), evaluator_name(set.evaluator()));
        let set = Arc::new(set);
        match self.policy.write() {
            Ok(mut p) => *p = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }
}

impl Latch {
    /// Compile the policy directory, run its own case tables and `test_*`
    /// rules, and swap it in only if everything passes. Blocking; returns
    /// the new hash, or why the working set was kept.
    pub fn reload_policy(&self) -> Result<String, String> {
        let result = self.try_reload();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let mut status = match self.policy_status.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        status.last_attempt = Some(now);
        match &result {
            Ok(hash) => {
                status.reloads += 1;
                status.last_error = None;
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                tracing::info!(policy = %hash, "policy reloaded");
            }
            Err(e) => {
                status.last_error = Some(e.clone());
                self.metrics.reloads.with_label_values(&["error"]).inc();
                tracing::error!(error = %e, policy = self.policy().hash(), "policy reload refused; the previous policy keeps deciding");
            }
        }
        result
    }

    fn try_reload(&self) -> Result<String, String> {
        let p = &self.config.policy;
        let with_tests =
            crate::policy::Sources::read_dir(&p.dir, true).map_err(|e| format!("{e:#}"))?;
        let candidate = PolicySet::compile(&with_tests, &p.entrypoint, p.timeout)
            .map_err(|e| format!("{e:#}"))?;
        let mut results = crate::policy::cases::run(&candidate, &with_tests.cases)
            .map_err(|e| format!("{e:#}"))?;
        results.extend(crate::policy::cases::run_rego_tests(&with_tests));
        let failures: Vec<String> = results
            .iter()
            .filter_map(|r| r.failure.as_ref().map(|f| format!("{}: {f}", r.name)))
            .collect();
        if !failures.is_empty() {
            return Err(format!(
                "{} policy test(s) failed: {}",
                failures.len(),
                failures.join("; ")
            ));
        }
        let serving =
            PolicySet::load(&p.dir, &p.entrypoint, p.timeout).map_err(|e| format!("{e:#}"))?;
        if serving.hash() == self.policy().hash() {
            return Ok(serving.hash().to_string());
        }
        let hash = serving.hash().to_string();
        self.set_policy(serving);
        Ok(hash)
    }
}

/// A cheap fingerprint of a directory tree: names, sizes and modification times.
pub fn dir_stamp(
    dir: &std::path::Path,
) -> Vec<(std::path::PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(path),
                Ok(m) => out.push((path, m.len(), m.modified().ok())),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// Reload the policy when files in its directory change (polled once a
/// second; a change is acted on once the tree is stable for one poll).
pub async fn watch_policy(latch: Latch, mut stop: watch::Receiver<bool>) {
    let dir = latch.config.policy.dir.clone();
    let stamp = |d: std::path::PathBuf| async move {
        tokio::task::spawn_blocking(move || dir_stamp(&d))
            .await
            .ok()
    };
    let mut applied = stamp(dir.clone()).await;
    let mut seen = applied.clone();
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return;
                }
                continue;
            }
        }
        let now = stamp(dir.clone()).await;
        if now != seen {
            seen = now; // still changing: wait for it to settle
            continue;
        }
        if now != applied {
            applied = now;
            let l = latch.clone();
            let _ = tokio::task::spawn_blocking(move || l.reload_policy()).await;
        }
    }
}

fn evaluator_name(e: Evaluator) -> &'static str {
    match e {
        Evaluator::Vm => "vm",
        Evaluator::Interpreter => "interpreter",
    }
}

/// A running Latch: bound addresses and a way to stop it.
pub struct Running {
    /// The state handle.
    pub latch: Latch,
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin listener listens.
    pub admin_addr: SocketAddr,
    /// Where the demo upstream listens, if configured.
    pub demo_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stop accepting, let in-flight requests finish, flush history.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let history = self.latch.clone();
        let _ = tokio::task::spawn_blocking(move || history.history.flush()).await;
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what} listener"))
}

/// Bind every listener and start serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let proxy_tls = config
        .proxy
        .tls
        .as_ref()
        .map(crate::tls::server_config)
        .transpose()?;
    let admin_tls = config
        .admin
        .tls
        .as_ref()
        .map(crate::tls::server_config)
        .transpose()?;
    let latch = tokio::task::spawn_blocking(move || Latch::new(config))
        .await
        .map_err(|e| anyhow!("start-up task failed: {e}"))??;
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    crate::gate::recover(&latch)
        .await
        .context("recovering approvals")?;
    if latch.config.policy.watch {
        tasks.push(tokio::spawn(watch_policy(latch.clone(), stop_rx.clone())));
    }
    tasks.push(tokio::spawn(crate::gate::scheduler(
        latch.clone(),
        std::time::Duration::from_millis(200),
        stop_rx.clone(),
    )));

    let demo_addr = match latch.config.demo {
        Some(addr) => {
            let l = bind(addr, "demo upstream").await?;
            let bound = l.local_addr()?;
            tasks.push(tokio::spawn(crate::demo::serve(l, stop_rx.clone())));
            Some(bound)
        }
        None => None,
    };

    let proxy = bind(latch.config.proxy.listen, "proxy").await?;
    let admin = bind(latch.config.admin.listen, "admin").await?;
    let proxy_addr = proxy.local_addr()?;
    let admin_addr = admin.local_addr()?;

    let proxy_opts = ListenerOptions {
        tls: proxy_tls.map(TlsAcceptor::from),
        directory: Some(latch.directory.clone()),
        header_read_timeout: latch.config.proxy.header_read_timeout,
        max_connections: latch.config.proxy.max_connections,
    };
    let l = latch.clone();
    tasks.push(tokio::spawn(server::serve(
        proxy,
        proxy_opts,
        stop_rx.clone(),
        move |req, conn| crate::proxy::handle(l.clone(), req, conn),
    )));

    let admin_opts = ListenerOptions {
        tls: admin_tls.map(TlsAcceptor::from),
        directory: None,
        header_read_timeout: latch.config.admin.header_read_timeout,
        max_connections: latch.config.admin.max_connections,
    };
    let l = latch.clone();
    tasks.push(tokio::spawn(server::serve(
        admin,
        admin_opts,
        stop_rx,
        move |req, conn| crate::admin::handle(l.clone(), req, conn),
    )));

    tracing::info!(
        proxy = %proxy_addr,
        admin = %admin_addr,
        policy = latch.policy().hash(),
        routes = latch.routes.len(),
        "latch started"
    );
    Ok(Running {
        latch,
        proxy_addr,
        admin_addr,
        demo_addr,
        stop,
        tasks,
    })
}
