use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::*;
use crate::testkit::http::{Reply, WebhookReceiver};
use crate::testkit::smtp::{SmtpCapture, SmtpMode};
use crate::testkit::{sample_summary, within};
use crate::{Recipients, SmtpConfig, SmtpSecurity, WebhookTarget};

/// Millisecond backoff, so retries happen at test speed.
fn fast_config() -> NoticeConfig {
    NoticeConfig {
        backoff_initial_ms: 1,
        backoff_max_ms: 5,
        ..NoticeConfig::default()
    }
}

struct Running {
    stop: watch::Sender<bool>,
    reports: mpsc::Receiver<DeliveryReport>,
    wake: DispatcherHandle,
    task: JoinHandle<()>,
}

impl Running {
    fn start(outbox: &Outbox, config: NoticeConfig) -> Running {
        let dispatcher = Dispatcher::new(outbox.clone(), config).expect("valid test config");
        let wake = dispatcher.handle();
        let (stop, shutdown) = watch::channel(false);
        let (report_tx, reports) = mpsc::channel(256);
        let task = tokio::spawn(dispatcher.run(shutdown, report_tx));
        Running {
            stop,
            reports,
            wake,
            task,
        }
    }

    async fn next_report(&mut self) -> DeliveryReport {
        within("a delivery report", self.reports.recv())
            .await
            .expect("the dispatcher is running, so the report channel is open")
    }

    /// Reports up to and including the one that settles a delivery.
    async fn until_settled(&mut self) -> Vec<DeliveryReport> {
        let mut seen = Vec::new();
        loop {
            let report = self.next_report().await;
            let settled = !matches!(report.outcome, DeliveryOutcome::Retrying { .. });
            seen.push(report);
            if settled {
                return seen;
            }
        }
    }

    async fn stop(self) {
        self.stop
            .send(true)
            .expect("the dispatcher holds the shutdown receiver");
        within("the dispatcher to stop", self.task)
            .await
            .expect("the dispatcher task does not panic");
    }
}

fn webhook(url: String) -> Recipients {
    Recipients {
        email: vec![],
        webhooks: vec![WebhookTarget {
            url,
            secret_env: None,
            slack: false,
        }],
    }
}

#[tokio::test]
async fn receiver_failing_three_times_gets_exactly_one_accepted_delivery() {
    let receiver =
        WebhookReceiver::start(|index, _| Some(Reply::status(if index < 3 { 503 } else { 200 })))
            .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    let ids = outbox
        .enqueue(
            &sample_summary("job-1", NoticeKind::Done),
            &webhook(receiver.url("/hook")),
        )
        .expect("enqueue");
    let mut running = Running::start(&outbox, fast_config());

    let reports = running.until_settled().await;
    running.stop().await;

    let attempts: Vec<&DeliveryOutcome> = reports.iter().map(|r| &r.outcome).collect();
    assert_eq!(attempts.len(), 4, "{attempts:?}");
    for (n, outcome) in attempts[..3].iter().enumerate() {
        assert!(
            matches!(outcome, DeliveryOutcome::Retrying { attempt, .. } if *attempt as usize == n + 1),
            "{outcome:?}"
        );
    }
    assert_eq!(attempts[3], &DeliveryOutcome::Delivered { attempts: 4 });
    assert_eq!(receiver.accepted(), 1);
    let requests = receiver.requests();
    assert_eq!(requests.len(), 4);
    assert!(requests
        .iter()
        .all(|r| r.header("x-reelspool-delivery") == Some(ids[0].as_str())));

    let status = outbox.status_for_job("job-1").expect("status");
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].state, DeliveryState::Delivered);
    assert_eq!(status[0].attempts, 4);
    assert!(outbox.pending().expect("pending").is_empty());
}

#[tokio::test]
async fn permanent_client_error_is_recorded_and_not_retried() {
    let gone =
        WebhookReceiver::start(|_, _| Some(Reply::status(410).with_body("hook deleted"))).await;
    let fine = WebhookReceiver::answering(200).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    outbox
        .enqueue(
            &sample_summary("job-1", NoticeKind::Done),
            &webhook(gone.url("/T0KEN")),
        )
        .expect("enqueue");
    let mut running = Running::start(&outbox, fast_config());

    let report = running.next_report().await;
    assert_eq!(report.job_id, "job-1");
    assert_eq!(report.channel, ChannelKind::Webhook);
    assert!(
        !report.target.contains("T0KEN"),
        "targets are redacted: {}",
        report.target
    );
    let DeliveryOutcome::PermanentFailure { attempts, reason } = &report.outcome else {
        panic!("a 410 is permanent: {report:?}");
    };
    assert_eq!(*attempts, 1);
    assert!(
        reason.contains("410") && reason.contains("hook deleted"),
        "{reason}"
    );

    // A later notice goes through the same dispatcher; had the 410 been
    // rescheduled (1-5 ms backoff), it would have been retried by then.
    outbox
        .enqueue(
            &sample_summary("job-2", NoticeKind::Done),
            &webhook(fine.url("/ok")),
        )
        .expect("enqueue");
    running.wake.wake();
    let next = running.next_report().await;
    assert_eq!(next.job_id, "job-2");
    assert_eq!(next.outcome, DeliveryOutcome::Delivered { attempts: 1 });
    running.stop().await;

    assert_eq!(
        gone.requests().len(),
        1,
        "the permanent failure was never retried"
    );
    let status = outbox.status_for_job("job-1").expect("status");
    assert_eq!(status[0].state, DeliveryState::PermanentFailure);
    assert!(status[0]
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("410")));
}

#[tokio::test]
async fn pending_notice_survives_the_dispatcher_and_is_sent_by_the_next_one() {
    let up = Arc::new(AtomicBool::new(false));
    let receiver = {
        let up = Arc::clone(&up);
        WebhookReceiver::start(move |_, _| {
            Some(Reply::status(if up.load(Ordering::SeqCst) {
                200
            } else {
                503
            }))
        })
        .await
    };
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let outbox = Outbox::open(dir.path()).expect("open outbox");
        outbox
            .enqueue(
                &sample_summary("job-1", NoticeKind::Failed),
                &webhook(receiver.url("/hook")),
            )
            .expect("enqueue");
        let mut running = Running::start(&outbox, fast_config());
        let report = running.next_report().await;
        assert!(
            matches!(report.outcome, DeliveryOutcome::Retrying { .. }),
            "{report:?}"
        );
        running.stop().await;
    }
    let tried = Outbox::open(dir.path())
        .expect("reopen outbox")
        .pending()
        .expect("pending");
    assert_eq!(tried.len(), 1, "still pending on disk");
    assert!(tried[0].attempts >= 1);
    assert!(tried[0]
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("503")));

    up.store(true, Ordering::SeqCst);
    let outbox = Outbox::open(dir.path()).expect("reopen outbox");
    let mut running = Running::start(&outbox, fast_config());
    let reports = running.until_settled().await;
    running.stop().await;

    let last = reports.last().expect("at least one report");
    assert!(
        matches!(last.outcome, DeliveryOutcome::Delivered { attempts } if attempts > tried[0].attempts)
    );
    assert_eq!(receiver.accepted(), 1);
    assert!(outbox.pending().expect("pending").is_empty());
}

#[tokio::test]
async fn wake_sends_a_notice_enqueued_while_running() {
    let receiver = WebhookReceiver::answering(200).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    let mut running = Running::start(&outbox, fast_config());

    outbox
        .enqueue(
            &sample_summary("job-1", NoticeKind::Started),
            &webhook(receiver.url("/hook")),
        )
        .expect("enqueue");
    running.wake.wake();

    let report = running.next_report().await;
    assert_eq!(report.event, NoticeKind::Started);
    assert_eq!(report.outcome, DeliveryOutcome::Delivered { attempts: 1 });
    running.stop().await;
}

#[tokio::test]
async fn shutdown_is_prompt_and_leaves_the_attempt_pending() {
    let receiver = WebhookReceiver::start(|_, _| None).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    outbox
        .enqueue(
            &sample_summary("job-1", NoticeKind::Done),
            &webhook(receiver.url("/hang")),
        )
        .expect("enqueue");
    let config = NoticeConfig {
        request_timeout_ms: 3_600_000,
        ..fast_config()
    };
    let running = Running::start(&outbox, config);
    receiver.wait_for(1).await;

    // Within PATIENCE, although the request would hang for an hour.
    running.stop().await;

    let pending = outbox.pending().expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(
        pending[0].attempts, 0,
        "the abandoned attempt is made again by the next dispatcher"
    );
}

#[tokio::test]
async fn retrying_stops_when_the_window_closes() {
    let receiver = WebhookReceiver::answering(503).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    outbox
        .enqueue(
            &sample_summary("job-1", NoticeKind::Done),
            &webhook(receiver.url("/down")),
        )
        .expect("enqueue");
    let config = NoticeConfig {
        retry_for: Duration::from_millis(100),
        ..fast_config()
    };
    let mut running = Running::start(&outbox, config);
    let reports = running.until_settled().await;
    running.stop().await;

    let last = reports.last().expect("at least one report");
    let DeliveryOutcome::PermanentFailure { attempts, reason } = &last.outcome else {
        panic!("the notice must be given up: {last:?}");
    };
    assert!(*attempts >= 2, "retried before giving up: {attempts}");
    assert!(
        reason.starts_with(&format!("gave up after {attempts} attempts over 100ms")),
        "{reason}"
    );
    assert_eq!(receiver.requests().len(), *attempts as usize);
}

#[tokio::test]
async fn email_notice_goes_from_the_outbox_to_the_smtp_server() {
    let mut server = SmtpCapture::start(SmtpMode::Plain, None).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    let config = NoticeConfig {
        smtp: Some(SmtpConfig {
            host: "127.0.0.1".into(),
            port: Some(server.port),
            security: SmtpSecurity::None,
            username: None,
            password_file: None,
            password_credential: None,
            tls_root_certificate: None,
            from: "render@example.com".into(),
        }),
        default_email: vec!["lead@example.com".into()],
        ..fast_config()
    };
    let recipients = Recipients {
        email: vec!["ops@example.com".into()],
        webhooks: vec![],
    }
    .with_default_email(&config.default_email);
    outbox
        .enqueue(&sample_summary("job-1", NoticeKind::Done), &recipients)
        .expect("enqueue");
    let mut running = Running::start(&outbox, config);

    let mut delivered_to = Vec::new();
    for _ in 0..2 {
        let report = running.next_report().await;
        assert_eq!(
            report.outcome,
            DeliveryOutcome::Delivered { attempts: 1 },
            "{report:?}"
        );
        delivered_to.push(report.target);
    }
    running.stop().await;

    let mut received: Vec<String> = Vec::new();
    for _ in 0..2 {
        received.extend(server.next_mail().await.rcpt_tos);
    }
    received.sort();
    delivered_to.sort();
    assert_eq!(received, vec!["lead@example.com", "ops@example.com"]);
    assert_eq!(delivered_to, received);
}

#[tokio::test]
async fn invalid_config_is_refused_at_construction() {
    let dir = tempfile::tempdir().expect("temp dir");
    let outbox = Outbox::open(dir.path()).expect("open outbox");
    let config = NoticeConfig {
        backoff_initial_ms: 0,
        ..NoticeConfig::default()
    };
    let err = Dispatcher::new(outbox, config).expect_err("zero backoff is invalid");
    assert!(err.to_string().contains("backoff_initial_ms"), "{err}");
}
