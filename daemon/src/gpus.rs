//! `reelspool gpus`: the cards of the pool, and requests to drain or undrain one.
//!
//! Like every client command this never touches the daemon's memory. A running daemon
//! describes its cards in `state/gpus.json` and picks up requests from `state/control/` on its
//! next tick (see `placement::pool_files`); without a daemon, the command runs discovery itself
//! and edits `state/drained.json` directly, under the daemon's lock so no daemon starts halfway.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use jobs::state::now_ms;
use serde::Serialize;

use crate::config::{self, DaemonConfig};
use crate::placement::pool_files::{
    self, CardAction, CardRequest, CardView, DrainRecord, DrainedCards, PoolPaths, PoolSnapshot,
};
use crate::spool;

/// `reelspool gpus drain|undrain`.
#[derive(Debug, Subcommand)]
pub enum GpusAction {
    /// Take a card out of placement; a job running there finishes first. Survives restarts.
    Drain {
        /// The card's UUID, as `reelspool gpus` lists it.
        uuid: String,
        /// How long to wait for the daemon to apply the request, in seconds.
        #[arg(long, default_value_t = 10, value_name = "SECS")]
        wait_secs: u64,
    },
    /// Put a drained card back into placement and forget its failures.
    Undrain {
        /// The card's UUID, as `reelspool gpus` lists it.
        uuid: String,
        /// How long to wait for the daemon to apply the request, in seconds.
        #[arg(long, default_value_t = 10, value_name = "SECS")]
        wait_secs: u64,
    },
}

/// What `reelspool gpus --json` prints.
#[derive(Debug, Serialize)]
struct GpusReport {
    daemon_running: bool,
    /// When the daemon last wrote `gpus.json`; `None` when the cards come from discovery.
    updated_at_ms: Option<u64>,
    cards: Vec<CardView>,
}

pub fn run(config_flag: Option<&Path>, action: Option<GpusAction>, json: bool) -> Result<ExitCode> {
    let config = DaemonConfig::load(&config::config_path(config_flag))?;
    match action {
        None => list(&config, json),
        Some(GpusAction::Drain { uuid, wait_secs }) => {
            change(&config, &uuid, CardAction::Drain, wait_secs)
        }
        Some(GpusAction::Undrain { uuid, wait_secs }) => {
            change(&config, &uuid, CardAction::Undrain, wait_secs)
        }
    }
}

/// The cards as the running daemon last described them, or as discovery sees them now.
fn report(config: &DaemonConfig) -> Result<GpusReport> {
    let paths = PoolPaths::new(&config.state_dir);
    let daemon_running = spool::try_lock_state(&config.state_dir)?.is_none();
    if daemon_running {
        if let Some(snapshot) = PoolSnapshot::load(&paths.snapshot)? {
            return Ok(GpusReport {
                daemon_running,
                updated_at_ms: Some(snapshot.updated_at_ms),
                cards: snapshot.cards,
            });
        }
    }
    Ok(GpusReport {
        daemon_running,
        updated_at_ms: None,
        cards: crate::placement::cards::discover_cards(config)?,
    })
}

fn list(config: &DaemonConfig, json: bool) -> Result<ExitCode> {
    let report = report(config)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    if !report.daemon_running {
        println!("the daemon is not running: cards as discovery sees them now, no job runs");
    }
    print!("{}", table(&report.cards));
    Ok(ExitCode::SUCCESS)
}

/// The cards as a table, then one line per note (health, outside use, why drained).
fn table(cards: &[CardView]) -> String {
    let rows: Vec<[String; 7]> = cards
        .iter()
        .map(|card| {
            [
                card.uuid.clone(),
                format!("{}#{}", card.name, card.index),
                format!(
                    "{:.1} GiB",
                    card.memory_total_bytes as f64 / gpu_pool::GIB as f64
                ),
                if card.healthy { "ok" } else { "unusable" }.to_string(),
                if card.drained {
                    "drained"
                } else {
                    "in service"
                }
                .to_string(),
                card.worker_model.clone().unwrap_or_else(|| "-".into()),
                card.job.clone().unwrap_or_else(|| "-".into()),
            ]
            // Card names come from the driver or the config, not from us: shown escaped.
            .map(|cell| jobs::escape_text(&cell).into_owned())
        })
        .collect();
    let header = [
        "UUID",
        "NAME",
        "MEMORY",
        "HEALTH",
        "STATE",
        "WORKER MODEL",
        "JOB",
    ]
    .map(String::from);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |row: &[String; 7]| {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        format!("{}\n", cells.join("  ").trim_end())
    };
    let mut out = line(&header);
    for row in &rows {
        out.push_str(&line(row));
    }
    for card in cards {
        if let Some(note) = &card.health_note {
            out.push_str(&format!(
                "  {}: {}\n",
                jobs::escape_text(&card.uuid),
                jobs::escape_text(note)
            ));
        }
        if let Some(reason) = &card.drain_reason {
            out.push_str(&format!(
                "  {}: drained: {}\n",
                jobs::escape_text(&card.uuid),
                jobs::escape_text(reason)
            ));
        }
    }
    out
}

fn change(
    config: &DaemonConfig,
    uuid: &str,
    action: CardAction,
    wait_secs: u64,
) -> Result<ExitCode> {
    let paths = PoolPaths::new(&config.state_dir);
    let word = match action {
        CardAction::Drain => "drained",
        CardAction::Undrain => "undrained",
    };
    if let Some(_lock) = spool::try_lock_state(&config.state_dir)? {
        change_offline(config, &paths, uuid, action)?;
        println!(
            "{uuid} {word}; the daemon is not running, so this applies when it starts ({})",
            paths.drained.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let known = report(config)?;
    if !known.cards.iter().any(|card| card.uuid == uuid) {
        bail!(
            "no card `{uuid}` in the pool; the cards are: {}\n  = help: copy a UUID from `reelspool gpus`",
            known.cards.iter().map(|c| c.uuid.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let request = CardRequest {
        uuid: uuid.to_string(),
        action,
        requested_at_ms: now_ms(),
    };
    let request_file = pool_files::write_request(&paths.control, &request)?;
    let want_drained = action == CardAction::Drain;
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    loop {
        let applied = !request_file.exists()
            && PoolSnapshot::load(&paths.snapshot)?.is_some_and(|snapshot| {
                snapshot
                    .cards
                    .iter()
                    .any(|card| card.uuid == uuid && card.drained == want_drained)
            });
        if applied {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "the daemon has not applied the request within {wait_secs} s; it stays in {} and \
                 applies on the daemon's next tick\n  = help: check the daemon's log",
                request_file.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let snapshot = PoolSnapshot::load(&paths.snapshot)?;
    let job = snapshot
        .iter()
        .flat_map(|s| s.cards.iter())
        .find(|card| card.uuid == uuid)
        .and_then(|card| card.job.clone());
    match (action, job) {
        (CardAction::Drain, Some(job)) => {
            println!("{uuid} drained; job {job} running there finishes first")
        }
        _ => println!("{uuid} {word}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Edits `drained.json` while no daemon runs (the caller holds the daemon's lock).
fn change_offline(
    config: &DaemonConfig,
    paths: &PoolPaths,
    uuid: &str,
    action: CardAction,
) -> Result<()> {
    let mut drained = DrainedCards::load(&paths.drained)?;
    match action {
        CardAction::Drain => {
            let cards = crate::placement::cards::discover_cards(config)
                .context("cannot check the UUID against the pool")?;
            if !cards.iter().any(|card| card.uuid == uuid) {
                bail!(
                    "no card `{uuid}` in the pool; the cards are: {}",
                    cards
                        .iter()
                        .map(|c| c.uuid.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            drained.cards.insert(
                uuid.to_string(),
                DrainRecord {
                    reason: "drained by the operator".into(),
                    since_ms: now_ms(),
                },
            );
        }
        CardAction::Undrain => {
            // A card no longer in the pool may still be undrained: it is in the file.
            drained.cards.remove(uuid);
        }
    }
    drained.save(&paths.drained)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpu_pool::GpuKind;

    fn view(uuid: &str, drained: bool, job: Option<&str>) -> CardView {
        CardView {
            uuid: uuid.into(),
            index: 1,
            name: "A100 80GB".into(),
            kind: GpuKind::Simulated,
            memory_total_bytes: 80 * gpu_pool::GIB,
            healthy: true,
            health_note: None,
            drained,
            drain_reason: drained.then(|| "drained by the operator".into()),
            job: job.map(str::to_string),
            worker_model: job.map(|_| "builtin:tiny".to_string()),
        }
    }

    #[test]
    fn table_shows_drain_state_job_and_reason() {
        let text = table(&[
            view("GPU-a", true, Some("job-1")),
            view("GPU-b", false, None),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("UUID"), "{text}");
        assert!(
            lines[1].contains("80.0 GiB")
                && lines[1].contains("drained")
                && lines[1].contains("builtin:tiny")
                && lines[1].ends_with("job-1"),
            "{text}"
        );
        assert!(
            lines[2].contains("in service") && lines[2].ends_with('-'),
            "{text}"
        );
        assert_eq!(lines[3], "  GPU-a: drained: drained by the operator");
    }
}
