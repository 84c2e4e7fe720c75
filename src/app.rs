//! Start-up: open the store, compile the policy, build the narrow handles
//! ([`Gate`], [`Proxy`], [`Admin`]) over the shared parts, bind every
//! listener and start the background tasks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::admin::{self, Admin};
use crate::audit::AuditLog;
use crate::config::{Config, StoreConfig};
use crate::gate::{self, Clock, Gate};
use crate::history::History;
use crate::identity::Directory;
use crate::policy::Engine;
use crate::proxy::{self, Proxy};
use crate::server::{self, ListenerOptions};
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::upstream::Route;

/// Open the configured store.
pub fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &config.store {
        StoreConfig::Sqlite(path) => Arc::new(SqliteStore::open(path, config.audit.key.clone())?),
        StoreConfig::SqliteMemory => Arc::new(SqliteStore::memory(config.audit.key.clone())?),
        StoreConfig::Postgres { url, ca_file } => {
            let tls = crate::tls::client_config(&crate::tls::system_roots(), ca_file.as_deref())?;
            Arc::new(crate::store::postgres::PgStore::connect(
                &url.0,
                config.audit.key.clone(),
                Arc::new(tls),
            )?)
        }
    })
}

/// Every handle a running Latch is made of.
#[derive(Clone)]
pub struct Handles {
    /// The approval engine.
    pub gate: Gate,
    /// The live policy.
    pub policy: Engine,
    /// Action history.
    pub history: Arc<History>,
    /// The data plane.
    pub proxy: Proxy,
    /// The admin listener.
    pub admin: Admin,
    /// Notification channels and their delivery worker.
    pub notify: crate::notify::Notifier,
    /// Durable state.
    pub store: Arc<dyn Store>,
}

/// Build every handle from `config`, with the gate reading `clock`.
/// Blocking: opens the store and compiles the policy.
pub fn build(config: &Config, clock: Clock) -> anyhow::Result<Handles> {
    let store = open_store(config)?;
    let store_handle = store.clone();
    let metrics = Metrics::new()?;
    let tracer = crate::trace::Tracer::new(&config.telemetry).context("tracing")?;
    let policy = Engine::start(&config.policy, metrics.clone())?;
    let needs_system_roots = config
        .routes
        .iter()
        .any(|r| r.upstream.scheme_str() == Some("https"));
    let roots = if needs_system_roots {
        crate::tls::system_roots()
    } else {
        rustls::RootCertStore::empty()
    };
    let routes: Arc<[Route]> = config
        .routes
        .iter()
        .map(|r| {
            Route::new(r.clone(), &roots, &metrics).with_context(|| format!("route {}", r.name))
        })
        .collect::<anyhow::Result<Vec<_>>>()?
        .into();
    let history = Arc::new(History::open(store.clone()).context("loading action history")?);
    let audit = Arc::new(
        AuditLog::start(store.clone(), metrics.audit_write.clone())
            .context("starting the audit writer")?,
    );
    let directory = Arc::new(Directory::new(&config.principals));
    let throttle = Arc::new(crate::throttle::Throttle::default());
    let input_headers: Arc<[http::HeaderName]> = config.policy.input_headers.clone().into();
    let gate = Gate::new(gate::Parts {
        store: store.clone(),
        directory: directory.clone(),
        config: config.gate.clone(),
        audit_key: config.audit.key.clone(),
        audit: audit.clone(),
        routes: routes.clone(),
        policy: policy.clone(),
        input_headers: input_headers.clone(),
        history: history.clone(),
        metrics: metrics.clone(),
        clock,
        tracer: tracer.clone(),
    });
    let prompts = crate::prompts::Registry::new(crate::prompts::Parts {
        store: store.clone(),
        gate: gate.clone(),
        policy: policy.clone(),
        history: history.clone(),
        audit: audit.clone(),
        config: config.prompts.clone(),
    });
    let proxy = Proxy::new(proxy::Parts {
        hold: config.proxy.hold,
        progress: config.proxy.progress,
        body_read_timeout: config.proxy.body_read_timeout,
        input_headers,
        routes,
        directory: directory.clone(),
        throttle: throttle.clone(),
        policy: policy.clone(),
        history: history.clone(),
        audit,
        gate: gate.clone(),
        access_log: config.log.access,
        prompts: prompts.clone(),
        metrics: metrics.clone(),
        tracer,
    });
    let notify = crate::notify::Notifier::new(crate::notify::Parts {
        config: config.notify.clone(),
        store: store.clone(),
        gate: gate.clone(),
        directory: directory.clone(),
        metrics: metrics.notify.clone(),
    })
    .context("notification channels")?;
    let admin = Admin::new(admin::Parts {
        config: config.admin.clone(),
        break_glass_roles: config.gate.break_glass_roles.clone(),
        gate: gate.clone(),
        policy: policy.clone(),
        sessions: admin::session::Sessions::new(store.clone(), directory.clone()),
        store,
        directory,
        throttle,
        history: history.clone(),
        metrics,
        prompts,
        notify: notify.clone(),
    });
    Ok(Handles {
        gate,
        policy,
        history,
        proxy,
        admin,
        notify,
        store: store_handle,
    })
}

/// A running Latch: bound addresses, its handles, and a way to stop it.
pub struct Running {
    /// The handles.
    pub handles: Handles,
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where the admin listener listens.
    pub admin_addr: SocketAddr,
    /// Where the demo upstream listens, if configured.
    pub demo_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// Stdio MCP servers' bridges (stopped when dropped).
    _bridges: Vec<crate::mcp::stdio::Bridge>,
}

impl Running {
    /// Stop accepting, let in-flight requests finish, flush history.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let history = self.handles.history.clone();
        let _ = tokio::task::spawn_blocking(move || history.flush()).await;
    }
}

/// How often a replica takes in the action history the others wrote.
const HISTORY_REFRESH: Duration = Duration::from_secs(2);

/// On a shared store, read the others' history now and then (novelty and
/// approval counts are then the replicas' together).
async fn refresh_history(
    history: Arc<History>,
    store: Arc<dyn Store>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HISTORY_REFRESH) => {}
            _ = stop.changed() => return,
        }
        let (h, s) = (history.clone(), store.clone());
        match tokio::task::spawn_blocking(move || h.refresh(s.as_ref())).await {
            Ok(Err(e)) => tracing::warn!(error = %e, "reading the shared action history failed"),
            Err(e) => tracing::warn!(error = %e, "history refresh task failed"),
            Ok(Ok(())) => {}
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for the {what} listener"))
}

/// Bind every listener and start serving.
pub async fn start(mut config: Config) -> anyhow::Result<Running> {
    // Stdio MCP servers get their bridges first: the routes point at them.
    let dir = config
        .path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let bridges = crate::mcp::stdio::start_all(&mut config.routes, &dir)
        .await
        .context("starting stdio MCP servers")?;
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
    let config = Arc::new(config);
    let c = config.clone();
    let handles = tokio::task::spawn_blocking(move || build(&c, Clock::system()))
        .await
        .map_err(|e| anyhow!("start-up task failed: {e}"))??;
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    // Verdicts given on other replicas release the calls held here.
    let (gate, rt) = (handles.gate.clone(), tokio::runtime::Handle::current());
    handles
        .store
        .watch_changes(Arc::new(move |id| {
            let (gate, id) = (gate.clone(), id.map(str::to_string));
            rt.spawn(async move { gate.changed_elsewhere(id).await });
        }))
        .context("watching the store for changes")?;
    handles
        .gate
        .recover()
        .await
        .context("recovering approvals")?;
    if config.policy.watch {
        tasks.push(tokio::spawn(handles.policy.clone().watch(stop_rx.clone())));
    }
    tasks.push(tokio::spawn(
        handles
            .gate
            .clone()
            .run_deadlines(Duration::from_millis(200), stop_rx.clone()),
    ));

    tasks.push(tokio::spawn(handles.notify.clone().run(stop_rx.clone())));
    if handles.store.shared() {
        tasks.push(tokio::spawn(refresh_history(
            handles.history.clone(),
            handles.store.clone(),
            stop_rx.clone(),
        )));
    }
    if config.audit.retain_days.is_some() || config.audit.retain_decisions_days.is_some() {
        tasks.push(tokio::spawn(crate::audit::run_retention(
            handles.store.clone(),
            config.audit.clone(),
            Duration::from_secs(3600),
            stop_rx.clone(),
        )));
    }

    let demo_addr = match config.demo {
        Some(addr) => {
            let l = bind(addr, "demo upstream").await?;
            let bound = l.local_addr()?;
            tasks.push(tokio::spawn(crate::demo::serve(l, stop_rx.clone())));
            Some(bound)
        }
        None => None,
    };

    let proxy_listener = bind(config.proxy.listen, "proxy").await?;
    let admin_listener = bind(config.admin.listen, "admin").await?;
    let proxy_addr = proxy_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;

    let proxy_opts = ListenerOptions {
        tls: proxy_tls.map(TlsAcceptor::from),
        directory: Some(handles.proxy.directory.clone()),
        header_read_timeout: config.proxy.header_read_timeout,
        max_connections: config.proxy.max_connections,
    };
    let p = handles.proxy.clone();
    tasks.push(tokio::spawn(server::serve(
        proxy_listener,
        proxy_opts,
        stop_rx.clone(),
        move |req, conn| proxy::handle(p.clone(), req, conn),
    )));

    let admin_opts = ListenerOptions {
        tls: admin_tls.map(TlsAcceptor::from),
        directory: None,
        header_read_timeout: config.admin.header_read_timeout,
        max_connections: config.admin.max_connections,
    };
    let a = handles.admin.clone();
    tasks.push(tokio::spawn(server::serve(
        admin_listener,
        admin_opts,
        stop_rx,
        move |req, conn| admin::handle(a.clone(), req, conn),
    )));

    tracing::info!(
        proxy = %proxy_addr,
        admin = %admin_addr,
        policy = handles.policy.current().hash(),
        routes = config.routes.len(),
        "latch started"
    );
    Ok(Running {
        handles,
        proxy_addr,
        admin_addr,
        demo_addr,
        stop,
        tasks,
        _bridges: bridges,
    })
}
