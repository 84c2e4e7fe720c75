//! E-mail over SMTP (lettre): plain text and HTML, a link to the approval
//! in the dashboard, and no way to decide from the mail itself (mail
//! scanners follow links).

use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::wire::Failure;
use crate::config::{SmtpConfig, SmtpTls};
use crate::gate::model::Approval;
use crate::identity::Directory;

/// One e-mail channel.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    to: Vec<String>,
    to_roles: Vec<String>,
}

impl Mailer {
    /// Build the SMTP transport (connections are made per message).
    pub fn new(
        smtp: &SmtpConfig,
        ca_file: Option<&std::path::Path>,
        from: &str,
        to: &[String],
        to_roles: &[String],
        timeout: std::time::Duration,
    ) -> anyhow::Result<Mailer> {
        let params = || -> anyhow::Result<TlsParameters> {
            let mut b = TlsParameters::builder(smtp.host.clone());
            if let Some(ca) = ca_file {
                b = b.add_root_certificate(Certificate::from_pem(&std::fs::read(ca)?)?);
            }
            Ok(b.build_rustls()?)
        };
        let tls = match smtp.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::StartTls => Tls::Required(params()?),
            SmtpTls::Wrapper => Tls::Wrapper(params()?),
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.clone())
            .port(smtp.port)
            .tls(tls)
            .timeout(Some(timeout));
        if let Some((user, pass)) = &smtp.credentials {
            b = b.credentials(Credentials::new(user.clone(), pass.0.clone()));
        }
        Ok(Mailer {
            transport: b.build(),
            from: from.parse()?,
            to: to.to_vec(),
            to_roles: to_roles.to_vec(),
        })
    }

    /// Fixed recipients plus everyone holding one of the roles.
    fn recipients(&self, directory: &Directory) -> Vec<String> {
        let mut out = self.to.clone();
        for p in directory.all() {
            let wanted = self.to_roles.iter().any(|r| p.has_role(r));
            if let (true, Some(e)) = (wanted, &p.email) {
                if !out.contains(e) {
                    out.push(e.clone());
                }
            }
        }
        out
    }

    /// Send one message to every recipient.
    pub async fn send(
        &self,
        directory: &Directory,
        subject: &str,
        text: String,
        html: String,
    ) -> Result<(), Failure> {
        let recipients = self.recipients(directory);
        if recipients.is_empty() {
            return Err(Failure::permanent(
                "no recipients: no principal with the roles has an email",
            ));
        }
        let mut m = Message::builder().from(self.from.clone()).subject(subject);
        for r in &recipients {
            let to: Mailbox = r
                .parse()
                .map_err(|e| Failure::permanent(format!("recipient {r}: {e}")))?;
            m = m.to(to);
        }
        let m = m
            .multipart(MultiPart::alternative_plain_html(text, html))
            .map_err(|e| Failure::permanent(format!("building the message: {e}")))?;
        match self.transport.send(m).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(Failure::permanent(format!("SMTP: {e}"))),
            Err(e) => Err(Failure::transient(format!("SMTP: {e}"))),
        }
    }
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Subject, text and HTML for a request (or, with `break_glass`, the
/// announcement of an override by `by` for `reason`).
pub fn compose(
    a: &Approval,
    dashboard_url: &str,
    break_glass: Option<(&str, &str)>,
) -> (String, String, String) {
    let link = format!("{dashboard_url}/#approval={}", a.id);
    let risk = serde_json::to_value(a.risk())
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    let call = format!("{} {} {}", a.tool, a.method, a.path);
    let deadline = chrono::DateTime::from_timestamp_millis(a.deadline)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    let reason = a.reason.as_deref().unwrap_or("(none given)");
    let policy = a.decision.reasons.join("; ");
    let (subject, lead) = match break_glass {
        Some((by, why)) => (
            format!("[Latch] Break-glass override by {by}: {call}"),
            format!("{by} overrode the gate for this call: {why}\nEvery emergency approval is reviewed."),
        ),
        None => (
            format!("[Latch] Approval needed ({risk}): {call} by {}", a.agent),
            format!("A call by {} is waiting for your decision until {deadline}.", a.agent),
        ),
    };
    let text = format!(
        "{lead}\n\nCall: {call}\nAgent: {}\nRisk: {risk}\nAgent's reason: {reason}\nPolicy ({}): {policy}\n\n\
         Decide in the dashboard (sign in first): {link}\n\nRejecting sends nothing; the agent gets your reason.\n",
        a.agent, a.decision.code
    );
    let e = html_escape;
    let html = format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\">\
         <p>{}</p><table>\
         <tr><th align=left>Call</th><td><code>{}</code></td></tr>\
         <tr><th align=left>Agent</th><td>{}</td></tr>\
         <tr><th align=left>Risk</th><td>{}</td></tr>\
         <tr><th align=left>Agent's reason</th><td>{}</td></tr>\
         <tr><th align=left>Policy ({})</th><td>{}</td></tr></table>\
         <p><a href=\"{}\">Open the approval in the dashboard</a> (you sign in there to decide).</p>\
         <p>Rejecting sends nothing; the agent gets your reason.</p></body></html>",
        e(&lead).replace('\n', "<br>"),
        e(&call),
        e(&a.agent),
        e(&risk),
        e(reason),
        e(&a.decision.code),
        e(&policy),
        e(&link),
    );
    (subject, text, html)
}
