use std::path::PathBuf;

use super::*;
use crate::testkit::smtp::{SmtpCapture, SmtpMode};
use crate::testkit::{sample_delivery, sample_summary};
use crate::{Destination, NoticeKind};

fn smtp_config(server: &SmtpCapture, security: SmtpSecurity) -> NoticeConfig {
    NoticeConfig {
        smtp: Some(SmtpConfig {
            host: "127.0.0.1".into(),
            port: Some(server.port),
            security,
            username: None,
            password_file: None,
            password_credential: None,
            tls_root_certificate: server.ca_pem.clone(),
            from: "reelspool <render@example.com>".into(),
        }),
        ..NoticeConfig::default()
    }
}

fn with_login(mut config: NoticeConfig, edit: impl FnOnce(&mut SmtpConfig)) -> NoticeConfig {
    let smtp = config
        .smtp
        .as_mut()
        .expect("the config has an smtp section");
    smtp.username = Some("render".into());
    edit(smtp);
    config
}

async fn send(
    config: &NoticeConfig,
    delivery: &Delivery,
    secrets: &SecretSource,
) -> AttemptOutcome {
    let Destination::Email { to } = &delivery.destination else {
        panic!("email tests deliver email");
    };
    deliver(config, delivery, to, &NoticeTemplates::builtin(), secrets).await
}

fn mail_to(address: &str) -> Delivery {
    sample_delivery(Destination::Email { to: address.into() })
}

#[tokio::test]
async fn smtp_message_has_headers_recipient_and_both_alternatives() {
    let mut server = SmtpCapture::start(SmtpMode::Plain, None).await;
    let config = smtp_config(&server, SmtpSecurity::None);
    let mut delivery = mail_to("ops@example.com");
    delivery.summary = sample_summary("job-7", NoticeKind::Failed);
    delivery.summary.error = Some("worker <pid 42> was killed".into());
    delivery.summary.log_tail = vec!["clip 3/40 denoising".into(), "Killed".into()];

    assert_eq!(
        send(&config, &delivery, &SecretSource::default()).await,
        AttemptOutcome::Delivered
    );

    let mail = server.next_mail().await;
    let id = delivery.delivery_id.as_str();
    assert_eq!(mail.mail_from, "render@example.com");
    assert_eq!(mail.rcpt_tos, vec!["ops@example.com"]);
    assert_eq!(mail.headers["from"], "reelspool <render@example.com>");
    assert_eq!(mail.headers["to"], "ops@example.com");
    assert_eq!(
        mail.headers["subject"],
        "[reelspool] interview-042: failed (40 of 40 clips)"
    );
    assert_eq!(mail.headers["message-id"], format!("<{id}@reelspool>"));
    assert_eq!(mail.headers["x-reelspool-delivery"], id);
    assert_eq!(mail.content_type, "multipart/alternative");

    let types: Vec<&str> = mail.parts.iter().map(|p| p.content_type.as_str()).collect();
    assert_eq!(types, vec!["text/plain", "text/html"]);
    let (text, html) = (&mail.parts[0].text, &mail.parts[1].text);
    assert!(
        text.contains("Job interview-042 is failed (failed)."),
        "{text}"
    );
    assert!(
        text.contains("Output:    /data/out/interview-042.mp4"),
        "{text}"
    );
    assert!(text.contains("GPU:       NVIDIA L4"), "{text}");
    assert!(text.contains("Duration:  5m 01s"), "{text}");
    assert!(
        text.contains("Error:\nworker <pid 42> was killed\n"),
        "{text}"
    );
    assert!(
        text.contains("Last log lines:\nclip 3/40 denoising\nKilled\n"),
        "{text}"
    );
    assert!(
        html.contains("<pre>worker &lt;pid 42&gt; was killed</pre>"),
        "{html}"
    );
    assert!(
        html.contains("<pre>clip 3/40 denoising\nKilled</pre>"),
        "{html}"
    );
    assert!(
        html.contains("<code>/data/out/interview-042.mp4</code>"),
        "{html}"
    );
}

#[tokio::test]
async fn starttls_with_login_from_a_systemd_credential() {
    let mut server = SmtpCapture::start(SmtpMode::Starttls, Some(("render", "pw-123"))).await;
    let credentials = tempfile::tempdir().expect("temp dir");
    std::fs::write(credentials.path().join("smtp-password"), "pw-123\n").expect("write credential");
    let config = with_login(smtp_config(&server, SmtpSecurity::Starttls), |smtp| {
        smtp.password_credential = Some("smtp-password".into());
    });
    let secrets = SecretSource {
        credentials_dir: Some(credentials.path().to_path_buf()),
    };

    assert_eq!(
        send(&config, &mail_to("ops@example.com"), &secrets).await,
        AttemptOutcome::Delivered
    );
    let mail = server.next_mail().await;
    assert!(
        mail.tls,
        "the session must have been upgraded with STARTTLS"
    );
    assert_eq!(mail.login.as_deref(), Some("render"));
}

#[tokio::test]
async fn implicit_tls_with_login_from_a_password_file() {
    let mut server = SmtpCapture::start(SmtpMode::Tls, Some(("render", "pw-456"))).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let password_file = dir.path().join("smtp.pw");
    std::fs::write(&password_file, "pw-456").expect("write password file");
    let config = with_login(smtp_config(&server, SmtpSecurity::Tls), |smtp| {
        smtp.password_file = Some(password_file.clone());
    });

    let outcome = send(
        &config,
        &mail_to("ops@example.com"),
        &SecretSource::default(),
    )
    .await;
    assert_eq!(outcome, AttemptOutcome::Delivered);
    let mail = server.next_mail().await;
    assert!(mail.tls, "the session must be TLS from the start");
    assert_eq!(mail.login.as_deref(), Some("render"));
}

#[tokio::test]
async fn untrusted_server_certificate_is_refused() {
    let server = SmtpCapture::start(SmtpMode::Starttls, None).await;
    let mut config = smtp_config(&server, SmtpSecurity::Starttls);
    if let Some(smtp) = config.smtp.as_mut() {
        smtp.tls_root_certificate = None;
    }
    let outcome = send(
        &config,
        &mail_to("ops@example.com"),
        &SecretSource::default(),
    )
    .await;
    assert!(
        matches!(outcome, AttemptOutcome::Transient { .. }),
        "a certificate from an unknown CA must not be accepted: {outcome:?}"
    );
}

#[tokio::test]
async fn rejected_login_is_permanent_and_never_shows_the_password() {
    let server = SmtpCapture::start(SmtpMode::Plain, Some(("render", "right-password"))).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let password_file = dir.path().join("smtp.pw");
    std::fs::write(&password_file, "wrong-password").expect("write password file");
    let config = with_login(smtp_config(&server, SmtpSecurity::None), |smtp| {
        smtp.password_file = Some(password_file.clone());
    });
    let outcome = send(
        &config,
        &mail_to("ops@example.com"),
        &SecretSource::default(),
    )
    .await;
    let AttemptOutcome::Permanent { reason } = outcome else {
        panic!("a 535 reply is permanent, got {outcome:?}");
    };
    assert!(reason.contains("535"), "{reason}");
    assert!(!reason.contains("wrong-password"), "{reason}");
}

#[tokio::test]
async fn refused_recipient_is_permanent() {
    let server = SmtpCapture::start(SmtpMode::Plain, None).await;
    let config = smtp_config(&server, SmtpSecurity::None);
    let outcome = send(
        &config,
        &mail_to("nobody@example.com"),
        &SecretSource::default(),
    )
    .await;
    let AttemptOutcome::Permanent { reason } = outcome else {
        panic!("a 550 reply is permanent, got {outcome:?}");
    };
    assert!(reason.contains("550"), "{reason}");
}

#[tokio::test]
async fn malformed_address_is_permanent() {
    let outcome = send(
        &NoticeConfig::default(),
        &mail_to("not an address"),
        &SecretSource::default(),
    )
    .await;
    let AttemptOutcome::Permanent { reason } = outcome else {
        panic!("a bad address is permanent, got {outcome:?}");
    };
    assert!(reason.contains("bad email address"), "{reason}");
}

#[tokio::test]
async fn no_transport_configured_says_what_to_add() {
    let outcome = send(
        &NoticeConfig::default(),
        &mail_to("ops@example.com"),
        &SecretSource::default(),
    )
    .await;
    let AttemptOutcome::Permanent { reason } = outcome else {
        panic!("no transport is permanent, got {outcome:?}");
    };
    assert!(reason.contains("`smtp` or `sendmail`"), "{reason}");
}

/// A stand-in sendmail: records its arguments and the message, then exits
/// with `status`.
fn fake_sendmail(dir: &std::path::Path, status: i32) -> PathBuf {
    let script = dir.join("sendmail");
    let body = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{args}'\ncat > '{mail}'\nexit {status}\n",
        args = dir.join("args").display(),
        mail = dir.join("mail.eml").display()
    );
    std::fs::write(&script, body).expect("write the fake sendmail");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("make it executable");
    }
    script
}

fn sendmail_config(command: PathBuf) -> NoticeConfig {
    NoticeConfig {
        sendmail: Some(SendmailConfig {
            command,
            from: "render@example.com".into(),
        }),
        ..NoticeConfig::default()
    }
}

#[tokio::test]
async fn sendmail_gets_envelope_arguments_and_the_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = sendmail_config(fake_sendmail(dir.path(), 0));
    let delivery = mail_to("ops@example.com");
    assert_eq!(
        send(&config, &delivery, &SecretSource::default()).await,
        AttemptOutcome::Delivered
    );

    let args =
        std::fs::read_to_string(dir.path().join("args")).expect("sendmail recorded its args");
    assert_eq!(
        args.lines().collect::<Vec<_>>(),
        vec!["-i", "-f", "render@example.com", "--", "ops@example.com"]
    );
    let mail =
        std::fs::read_to_string(dir.path().join("mail.eml")).expect("sendmail got the message");
    assert!(
        mail.contains("Subject: [reelspool] interview-042: done"),
        "{mail}"
    );
    assert!(
        mail.contains(&format!("X-Reelspool-Delivery: {}", delivery.delivery_id)),
        "{mail}"
    );
}

#[tokio::test]
async fn failing_sendmail_is_retried() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = sendmail_config(fake_sendmail(dir.path(), 75));
    let outcome = send(
        &config,
        &mail_to("ops@example.com"),
        &SecretSource::default(),
    )
    .await;
    assert!(
        matches!(outcome, AttemptOutcome::Transient { .. }),
        "{outcome:?}"
    );
}
