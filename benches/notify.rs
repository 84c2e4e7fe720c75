//! `cargo bench --bench notify`: time from an agent's gated call to the
//! notification arriving at a webhook receiver on loopback — the approval's
//! synced commit, the outbox fan-out and the signed delivery.
//! `NOTIFY_CALLS` (default 90; an agent may have 100 pending) sequential calls.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use latch::testing::*;

fn main() {
    let n: usize = std::env::var("NOTIFY_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(90)
        .clamp(2, 100);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let up = Upstream::start().await;
        let hooks = Stub::start(Arc::new(|_: &str, _| (204, vec![], String::new()))).await;
        let extra = format!(
            "[notify]\ndefault = [\"hooks\"]\n\n[[notify.channels]]\nname = \"hooks\"\nkind = \"webhook\"\nurl = \"{}/events\"\nsecret_env = \"HOOK_SECRET\"\n",
            hooks.url()
        );
        let latch = TestLatch::start_env(
            config_text(&up.url(), &extra),
            TEST_POLICY,
            &[("HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")],
        )
        .await;
        let body = r#"{"gate": true, "approval": {"require": [{"role": "lead", "count": 1}]}}"#;
        let mut lat = Vec::with_capacity(n);
        for i in 0..n {
            let req = agent_request("POST", latch.proxy(), "/tools/echo/send")
                .header("content-type", "application/json")
                .header("prefer", "respond-async")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let sent = Instant::now();
            assert_eq!(send(req).await.status, 202);
            let got = hooks.wait("/events", i + 1).await;
            lat.push(got[i].0 - sent);
        }
        lat.sort();
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        println!(
            "gated call → signed webhook received ({n} calls): p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
            ms(lat[n / 2]),
            ms(lat[n * 9 / 10]),
            ms(lat[n - 1])
        );
    });
}
