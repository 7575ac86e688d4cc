//! Email delivery through SMTP or a local sendmail program.
//!
//! Each delivery is one message to one address, built from the templates
//! as a `multipart/alternative` (plain text first, HTML second). The
//! delivery id is the `Message-ID` (`<id@reelspool>`) and the
//! `X-Reelspool-Delivery` header, so a duplicate after a crash can be
//! recognised by a mail filter.
//!
//! A new SMTP connection is opened per message: notices are rare, and a
//! fresh connection reads the password file each time, so a rotated
//! password takes effect without a restart.

use lettre::message::header::{Header, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSendmailTransport, AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::attempt::{error_chain, AttemptOutcome};
use crate::config::{SendmailConfig, SmtpConfig, SmtpSecurity};
use crate::secret::{read_secret_file, SecretSource};
use crate::template::{NoticeFields, NoticeTemplates};
use crate::{Delivery, NoticeConfig};

/// The `X-Reelspool-Delivery` mail header.
#[derive(Debug, Clone)]
struct DeliveryHeader(String);

impl Header for DeliveryHeader {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("X-Reelspool-Delivery")
    }

    fn parse(text: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(DeliveryHeader(text.to_string()))
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), self.0.clone())
    }
}

/// Makes one attempt to mail `delivery` to `to`.
pub(crate) async fn deliver(
    config: &NoticeConfig,
    delivery: &Delivery,
    to: &str,
    templates: &NoticeTemplates,
    secrets: &SecretSource,
) -> AttemptOutcome {
    let to: Mailbox = match to.parse() {
        Ok(mailbox) => mailbox,
        Err(err) => return AttemptOutcome::permanent(format!("bad email address {to:?}: {err}")),
    };
    let from = match (&config.smtp, &config.sendmail) {
        (Some(smtp), _) => &smtp.from,
        (None, Some(sendmail)) => &sendmail.from,
        (None, None) => {
            return AttemptOutcome::permanent(
                "no mail transport configured; add a `smtp` or `sendmail` section to the notices config",
            )
        }
    };
    let message = match build_message(from, to, delivery, templates) {
        Ok(message) => message,
        Err(reason) => return AttemptOutcome::permanent(reason),
    };
    let limit = config.request_timeout();
    let sent = match (&config.smtp, &config.sendmail) {
        (Some(smtp), _) => {
            let transport = match smtp_transport(smtp, config, secrets).await {
                Ok(transport) => transport,
                Err(reason) => return AttemptOutcome::transient(reason),
            };
            tokio::time::timeout(limit, transport.send(message))
                .await
                .map(|sent| sent.map(drop).map_err(classify_smtp_error))
        }
        (None, Some(sendmail)) => {
            tokio::time::timeout(limit, sendmail_transport(sendmail).send(message))
                .await
                .map(|sent| {
                    sent.map(drop).map_err(|err| {
                        AttemptOutcome::transient(format!("sendmail failed: {}", error_chain(&err)))
                    })
                })
        }
        (None, None) => unreachable!("invariant: the no-transport case returned above"),
    };
    match sent {
        Ok(Ok(())) => AttemptOutcome::Delivered,
        Ok(Err(outcome)) => outcome,
        Err(_) => AttemptOutcome::transient(format!(
            "mail not sent within the request limit of {} ms",
            config.request_timeout_ms
        )),
    }
}

fn build_message(
    from: &str,
    to: Mailbox,
    delivery: &Delivery,
    templates: &NoticeTemplates,
) -> Result<Message, String> {
    let from: Mailbox = from
        .parse()
        .map_err(|err| format!("bad From address {from:?} in the config: {err}"))?;
    let id = delivery.delivery_id.as_str();
    let text = templates.render_email(&NoticeFields::new(&delivery.summary, id));
    Message::builder()
        .from(from)
        .to(to)
        .subject(text.subject)
        .message_id(Some(format!("<{id}@reelspool>")))
        .header(DeliveryHeader(id.to_string()))
        .multipart(MultiPart::alternative_plain_html(text.text, text.html))
        .map_err(|err| format!("cannot build the message: {err}"))
}

/// SMTP replies 5xx mean "never"; everything else (4xx, network, TLS
/// handshake, timeouts) may work later.
fn classify_smtp_error(err: lettre::transport::smtp::Error) -> AttemptOutcome {
    let reason = format!("SMTP: {}", error_chain(&err));
    if err.is_permanent() {
        AttemptOutcome::permanent(reason)
    } else {
        AttemptOutcome::transient(reason)
    }
}

async fn smtp_transport(
    smtp: &SmtpConfig,
    config: &NoticeConfig,
    secrets: &SecretSource,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
        .port(smtp.effective_port())
        .timeout(Some(config.connect_timeout().max(config.request_timeout())));
    if smtp.security != SmtpSecurity::None {
        let mut tls = TlsParameters::builder(smtp.host.clone());
        if let Some(path) = &smtp.tls_root_certificate {
            let pem = tokio::fs::read(path).await.map_err(|err| {
                format!("cannot read tls_root_certificate {}: {err}", path.display())
            })?;
            let certificate = Certificate::from_pem(&pem).map_err(|err| {
                format!(
                    "tls_root_certificate {} is not a PEM certificate: {err}",
                    path.display()
                )
            })?;
            tls = tls.add_root_certificate(certificate);
        }
        let parameters = tls
            .build_rustls()
            .map_err(|err| format!("cannot set up TLS for {}: {}", smtp.host, error_chain(&err)))?;
        builder = builder.tls(match smtp.security {
            SmtpSecurity::Tls => Tls::Wrapper(parameters),
            _ => Tls::Required(parameters),
        });
    }
    if let Some(username) = &smtp.username {
        let secret = match (&smtp.password_file, &smtp.password_credential) {
            (Some(path), _) => read_secret_file(path).await?,
            (None, Some(name)) => secrets.credential(name).await?,
            (None, None) => return Err("smtp.username is set but no password setting is".into()),
        };
        let password = String::from_utf8(secret.expose().to_vec())
            .map_err(|_| "the SMTP password is not valid UTF-8".to_string())?;
        builder = builder.credentials(Credentials::new(username.clone(), password));
    }
    Ok(builder.build())
}

fn sendmail_transport(sendmail: &SendmailConfig) -> AsyncSendmailTransport<Tokio1Executor> {
    AsyncSendmailTransport::<Tokio1Executor>::new_with_command(sendmail.command.as_os_str())
}

#[cfg(test)]
mod tests;
