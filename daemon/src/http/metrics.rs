//! The Prometheus metrics (`/metrics`, text format 0.0.4).
//!
//! Names follow the Prometheus conventions: the `reelspool_` prefix, base units (seconds,
//! bytes, ratios 0–1), `_total` on counters (the encoder adds it: counters are registered
//! without it). Cards are labelled by `gpu` (index) and `uuid`, the same strings NVML and
//! dcgm-exporter use, so PromQL can join the two. Job ids, names and paths are never labels.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CardLabels {
    pub gpu: String,
    pub uuid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub gpu: String,
    pub uuid: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UuidLabel {
    pub uuid: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChannelLabel {
    pub channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub channel: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

type RatioGauge = Gauge<f64, AtomicU64>;

/// How a job can end (`outcome` of `reelspool_jobs_finished_total` and the job durations).
const OUTCOMES: [&str; 3] = ["done", "failed", "cancelled"];
/// The `reason` values of [`retry_reason`].
const RETRY_REASONS: [&str; 3] = ["oom", "timeout", "crash"];
/// Notice channels, and what a delivery attempt can come to.
pub const CHANNELS: [&str; 2] = ["email", "webhook"];
const DELIVERY_OUTCOMES: [&str; 3] = ["delivered", "failed", "retrying"];
/// The `kind` values of [`rejection_kind`].
const REJECTION_KINDS: [&str; 4] = ["parse", "validate", "permission", "file_name"];
type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Job durations: a minute to a day.
fn job_duration_histogram() -> Histogram {
    Histogram::new([
        10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0,
    ])
}

/// Every metric, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    pub jobs: Family<StateLabel, Gauge>,
    pub submitted: Family<SourceLabel, Counter>,
    pub finished: Family<OutcomeLabel, Counter>,
    pub job_duration: HistogramFamily<OutcomeLabel>,
    pub queue_wait: Histogram,
    pub clips: Family<CardLabels, Counter>,
    pub frames: Family<UuidLabel, Counter>,
    pub clip_duration: Histogram,
    pub retries: Family<ReasonLabel, Counter>,
    pub resumes: Counter,
    pub gpu_memory_total: Family<ModelLabels, Gauge>,
    pub gpu_memory_used: Family<ModelLabels, Gauge>,
    pub gpu_utilization: Family<CardLabels, RatioGauge>,
    pub gpu_assigned: Family<CardLabels, Gauge>,
    pub gpu_drained: Family<CardLabels, Gauge>,
    pub queue_oldest: RatioGauge,
    pub outbox: Family<ChannelLabel, Gauge>,
    pub outbox_oldest: Family<ChannelLabel, RatioGauge>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub rejections: Family<KindLabel, Counter>,
    pub last_finished: RatioGauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register(
            "reelspool_build_info",
            "Always 1; the labels tell which reelspool runs",
            build,
        );
        let metrics = Metrics {
            jobs: Family::default(),
            submitted: Family::default(),
            finished: Family::default(),
            job_duration: Family::new_with_constructor(job_duration_histogram),
            queue_wait: Histogram::new([
                1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
            ]),
            clips: Family::default(),
            frames: Family::default(),
            clip_duration: Histogram::new([
                0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
            ]),
            retries: Family::default(),
            resumes: Counter::default(),
            gpu_memory_total: Family::default(),
            gpu_memory_used: Family::default(),
            gpu_utilization: Family::default(),
            gpu_assigned: Family::default(),
            gpu_drained: Family::default(),
            queue_oldest: RatioGauge::default(),
            outbox: Family::default(),
            outbox_oldest: Family::default(),
            deliveries: Family::default(),
            rejections: Family::default(),
            last_finished: RatioGauge::default(),
            registry: Registry::default(),
        };
        let Metrics {
            jobs,
            submitted,
            finished,
            job_duration,
            queue_wait,
            clips,
            frames,
            clip_duration,
            retries,
            resumes,
            gpu_memory_total,
            gpu_memory_used,
            gpu_utilization,
            gpu_assigned,
            gpu_drained,
            queue_oldest,
            outbox,
            outbox_oldest,
            deliveries,
            rejections,
            last_finished,
            ..
        } = &metrics;
        registry.register(
            "reelspool_jobs",
            "Jobs by state (queued, running, done, failed, cancelled)",
            jobs.clone(),
        );
        registry.register(
            "reelspool_jobs_submitted",
            "Jobs accepted by intake, by source",
            submitted.clone(),
        );
        registry.register(
            "reelspool_jobs_finished",
            "Jobs that ended, by outcome (done, failed, cancelled)",
            finished.clone(),
        );
        registry.register(
            "reelspool_job_duration_seconds",
            "From the first start of a job to its end, by outcome",
            job_duration.clone(),
        );
        registry.register(
            "reelspool_job_queue_wait_seconds",
            "From submission to the first start of a job",
            queue_wait.clone(),
        );
        registry.register(
            "reelspool_clips_rendered",
            "Clips rendered and checkpointed, by card",
            clips.clone(),
        );
        registry.register(
            "reelspool_frames_rendered",
            "Video frames rendered, by card (rate() is frames per second)",
            frames.clone(),
        );
        registry.register(
            "reelspool_clip_render_duration_seconds",
            "Time to render one clip",
            clip_duration.clone(),
        );
        registry.register(
            "reelspool_clip_retries",
            "Attempts started again after a failed one, by reason (oom, timeout, crash)",
            retries.clone(),
        );
        registry.register(
            "reelspool_checkpoint_resumes",
            "Attempts that resumed from a checkpoint instead of clip 0",
            resumes.clone(),
        );
        registry.register(
            "reelspool_gpu_memory_total_bytes",
            "Memory on the card",
            gpu_memory_total.clone(),
        );
        registry.register(
            "reelspool_gpu_memory_used_bytes",
            "Memory held by any process on the card",
            gpu_memory_used.clone(),
        );
        registry.register(
            "reelspool_gpu_utilization_ratio",
            "Busy fraction of the card over the driver's last sample period (NVML cards only)",
            gpu_utilization.clone(),
        );
        registry.register(
            "reelspool_gpu_assigned",
            "1 while a job of this daemon runs on the card",
            gpu_assigned.clone(),
        );
        registry.register(
            "reelspool_gpu_drained",
            "1 while the card is drained (by an operator, or after repeated failures): it gets no new jobs",
            gpu_drained.clone(),
        );
        registry.register(
            "reelspool_queue_oldest_timestamp_seconds",
            "When the job queued longest was submitted (Unix time); 0 when no job is queued",
            queue_oldest.clone(),
        );
        registry.register(
            "reelspool_notice_outbox_pending",
            "Notices waiting in the durable outbox, by channel",
            outbox.clone(),
        );
        registry.register(
            "reelspool_notice_outbox_oldest_timestamp_seconds",
            "When the oldest notice still waiting in the outbox was queued (Unix time), by channel; 0 when none waits",
            outbox_oldest.clone(),
        );
        registry.register(
            "reelspool_notice_deliveries",
            "Notice delivery attempts by channel and outcome (delivered, failed, retrying)",
            deliveries.clone(),
        );
        registry.register(
            "reelspool_intake_rejections",
            "Job files refused by intake, by kind",
            rejections.clone(),
        );
        registry.register(
            "reelspool_last_job_finished_timestamp_seconds",
            "When the last job ended (Unix time); 0 until one does",
            last_finished.clone(),
        );
        // Every label value known in advance exists from the start, at 0: `increase()` then
        // sees the first job that fails, and the series are there for dashboards and alerts.
        for outcome in OUTCOMES {
            let outcome = OutcomeLabel {
                outcome: outcome.to_string(),
            };
            let _ = finished.get_or_create(&outcome);
            let _ = job_duration.get_or_create(&outcome);
        }
        for reason in RETRY_REASONS {
            let _ = retries.get_or_create(&ReasonLabel {
                reason: reason.to_string(),
            });
        }
        for channel in CHANNELS {
            for outcome in DELIVERY_OUTCOMES {
                let _ = deliveries.get_or_create(&DeliveryLabels {
                    channel: channel.to_string(),
                    outcome: outcome.to_string(),
                });
            }
        }
        for kind in REJECTION_KINDS {
            let _ = rejections.get_or_create(&KindLabel {
                kind: kind.to_string(),
            });
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if let Err(err) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::warn!(error = %err, "cannot encode the metrics");
        }
        text
    }
}

/// The `reason` label of a retry, from its free-text reason.
pub fn retry_reason(text: &str) -> &'static str {
    let lower = text.to_lowercase();
    if lower.contains("out of memory") || lower.contains("oom") {
        "oom"
    } else if lower.contains("timed out") || lower.contains("timeout") || lower.contains("hung") {
        "timeout"
    } else {
        "crash"
    }
}

/// The `kind` label of an intake rejection, from the first line of its `.error` file.
pub fn rejection_kind(text: &str) -> &'static str {
    let lower = text.to_lowercase();
    if lower.contains("not valid utf-8") {
        "file_name"
    } else if lower.contains("refused:")
        || lower.contains("may not")
        || lower.contains("permission")
    {
        "permission"
    } else if lower.contains("yaml") || lower.contains("parse") || lower.contains("expected") {
        "parse"
    } else {
        "validate"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_total_and_no_job_labels() {
        let metrics = Metrics::new();
        metrics
            .finished
            .get_or_create(&OutcomeLabel {
                outcome: "done".into(),
            })
            .inc();
        metrics
            .clips
            .get_or_create(&CardLabels {
                gpu: "0".into(),
                uuid: "GPU-abc".into(),
            })
            .inc_by(3);
        let text = metrics.encode();
        assert!(
            text.contains("reelspool_jobs_finished_total{outcome=\"done\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("reelspool_clips_rendered_total{gpu=\"0\",uuid=\"GPU-abc\"} 3"),
            "{text}"
        );
        assert!(text.contains("# TYPE reelspool_job_queue_wait_seconds histogram"));
        assert!(
            text.contains("reelspool_jobs_finished_total{outcome=\"failed\"} 0"),
            "every outcome exists before it happens: {text}"
        );
        assert!(text.contains("reelspool_build_info{version=\""));
    }

    #[test]
    fn reasons_and_kinds_are_classified() {
        assert_eq!(retry_reason("out of memory: CUDA"), "oom");
        assert_eq!(retry_reason("no heartbeat for 300 s: timed out"), "timeout");
        assert_eq!(retry_reason("worker killed by SIGSEGV"), "crash");
        assert_eq!(
            rejection_kind("error: the file name `a\\xff` is not valid UTF-8"),
            "file_name"
        );
        assert_eq!(
            rejection_kind("error: unknown field `foo`, expected one of"),
            "parse"
        );
    }
}
