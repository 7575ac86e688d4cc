//! `reelspool`: the render farm daemon and its command line.
//!
//! This file only parses arguments and maps results to exit codes (0 ok, 1 error, 2 usage);
//! every command lives in its own module.
//!
//! ## Layers
//!
//! The crate reads top to bottom. A module imports only from its own layer and the layers
//! below it, and no import cycle spans more than two files (a parent module and its child may
//! name each other); `layers.rs` checks both against this list on every test run.
//!
//! 1. commands: `cli`, `demo`, `gpus`, `logs`
//! 2. the running daemon: `daemon`
//! 3. servers: `control`, `http`
//! 4. service: `scheduler`, `intake`, `backlog`, `reload`, `notify_glue`, `systemd`,
//!    `cancels`, `priorities`, `executor`, `placement`, `supervisor`, `warm`, `death`,
//!    `engines`
//! 5. job views: `jobview`, `batches`
//! 6. ground: `config`, `spool`, `owner`, `space`, `events`, `worker_log`, `logging`, `layers`
//!
//! - **Commands** are what `main` runs. Each reads the config and the state directory, never
//!   the daemon's memory; for members, who cannot read job folders, it asks the daemon over
//!   the control socket.
//! - **The daemon** starts every task below it (intake, the scheduler, the control socket, the
//!   web server, the notice dispatcher, the systemd notifier) and stops them in order.
//! - **Servers** answer over sockets: the control socket (members' `status`, `logs`, `cancel`,
//!   `priority`) and the web server (dashboard, JSON API, metrics), which applies the control
//!   socket's rules to everything about jobs.
//! - **Service** is the work: intake turns files into jobs; the scheduler, the one writer of
//!   job state, queues and places them; supervisors and executors run the workers; placement
//!   picks the card. An operator's cancel or priority change has one path, in `cancels` and
//!   `priorities`, whichever front end it comes from.
//! - **Job views** find a job and show it: the read-and-print helpers every front end shares.
//! - **Ground** is what everything stands on: the config file and all its types, the spool and
//!   state layout with the daemon's lock, job owners, disk space, job events, the worker log's
//!   name, logging.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod backlog;
mod batches;
mod cancels;
mod cli;
mod config;
mod control;
mod daemon;
mod death;
mod demo;
mod engines;
mod events;
mod executor;
mod gpus;
mod http;
mod intake;
mod jobview;
#[cfg(test)]
mod layers;
mod logging;
mod logs;
mod notify_glue;
mod owner;
mod placement;
mod priorities;
mod reload;
mod scheduler;
mod space;
mod spool;
mod supervisor;
mod systemd;
mod warm;
mod worker_log;

/// Render farm daemon for audio-driven talking-avatar video models.
///
/// Drop a YAML job file into the spool; reelspool places it on one GPU, renders it clip by clip
/// with a checkpoint after every clip, and tells you when it is done.
#[derive(Debug, Parser)]
#[command(name = "reelspool", version, propagate_version = true)]
struct Cli {
    /// Configuration file [default: /etc/reelspool/reelspool.yaml]
    #[arg(long, global = true, env = "REELSPOOL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: watch the spool, schedule jobs, supervise workers.
    Daemon,
    /// Check job files without a daemon; prints errors like a compiler, exit 1 if any is invalid.
    Validate {
        /// Job files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Validate a job file, then hand it to the daemon through the spool (atomic rename).
    Submit {
        /// The job file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Spool directory to submit into [default: the config's spool_dir]
        #[arg(long, value_name = "DIR")]
        spool: Option<PathBuf>,
    },
    /// Show jobs: a table of all, or the details and recent events of one.
    Status {
        /// Job id (or a unique prefix of it).
        #[arg(conflicts_with = "batch")]
        id: Option<String>,
        /// Show one batch (the jobs filed from one batch file): its progress and its jobs.
        #[arg(long, value_name = "BATCH_ID")]
        batch: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only jobs in this state (queued, running, done, failed, cancelled); repeat for
        /// several.
        #[arg(long = "state", value_name = "STATE", value_parser = jobview::parse_phase)]
        states: Vec<jobs::state::Phase>,
        /// List at most this many jobs, oldest first.
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
    },
    /// Cancel a queued or running job, or every unfinished job of a batch.
    Cancel {
        /// Job id (or a unique prefix of it).
        #[arg(required_unless_present = "batch", conflicts_with = "batch")]
        id: Option<String>,
        /// Cancel the batch with this id instead.
        #[arg(long, value_name = "BATCH_ID")]
        batch: Option<String>,
        /// How long to wait for the daemon to confirm, in seconds.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        wait_secs: u64,
    },
    /// Change the priority of a queued or running job (higher runs first; -1000 to 1000).
    Priority {
        /// Job id (or a unique prefix of it).
        id: String,
        /// The new priority, -1000 to 1000 like a job file's `priority:`.
        #[arg(allow_negative_numbers = true, value_name = "N")]
        priority: i64,
        /// How long to wait for the daemon to apply it, in seconds.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        wait_secs: u64,
    },
    /// Print what a job's worker wrote to stderr (every attempt), from `<job-dir>/worker.log`.
    Logs {
        /// Job id (or a unique prefix of it).
        id: String,
        /// Keep printing new lines until the job is done, failed or cancelled.
        #[arg(long, short)]
        follow: bool,
    },
    /// List the GPUs (UUID, name, memory, health, drain state, job), or drain/undrain one.
    Gpus {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<gpus::GpusAction>,
    },
    /// Check the configuration file the same way job files are checked.
    CheckConfig,
    /// Check a Live Avatar release directory (headers only) and print its memory plans.
    Model {
        #[command(subcommand)]
        action: ModelAction,
    },
    /// Render examples/hello.yaml end to end on the CPU with the built-in model.
    Demo {
        /// Keep the demo's spool and state here instead of a temporary directory.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Render one job directory; with --serve, stay up for further jobs from stdin (started by the
    /// daemon, one warm worker per card).
    #[command(hide = true)]
    Worker {
        /// The job's directory under the state dir.
        job_dir: PathBuf,
        /// Stay up after the job and take further jobs from stdin (a warm worker).
        #[arg(long)]
        serve: bool,
        /// With --serve: exit after this long without a job.
        #[arg(long, value_name = "SECS", default_value_t = 600)]
        idle_exit_secs: u64,
    },
}

#[derive(Debug, Subcommand)]
enum ModelAction {
    /// Report every missing, extra, mis-shaped or wrongly typed tensor of a release (file and
    /// key), then the memory plan on this machine's cards; exit 0 only when a job could run.
    Check {
        /// The release directory.
        #[arg(value_name = "DIR")]
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config_flag = cli.config.as_deref();
    let result = match cli.command {
        Command::Daemon => daemon::run_from_cli(config_flag),
        Command::Validate { files } => cli::validate(config_flag, &files),
        Command::Submit { file, spool } => cli::submit(config_flag, &file, spool.as_deref()),
        Command::Status {
            batch: Some(batch),
            json,
            ..
        } => cli::status_batch(config_flag, &batch, json),
        Command::Status {
            id,
            json,
            states,
            limit,
            batch: None,
        } => cli::status(
            config_flag,
            id.as_deref(),
            json,
            &jobview::StatusFilter {
                phases: states,
                limit,
            },
        ),
        Command::Cancel {
            batch: Some(batch),
            wait_secs,
            ..
        } => cli::cancel_batch(config_flag, &batch, wait_secs),
        Command::Cancel { id, wait_secs, .. } => {
            cli::cancel(config_flag, id.as_deref().unwrap_or_default(), wait_secs)
        }
        Command::Priority {
            id,
            priority,
            wait_secs,
        } => cli::priority(config_flag, &id, priority, wait_secs),
        Command::Logs { id, follow } => logs::run(config_flag, &id, follow),
        Command::Gpus { json, action } => gpus::run(config_flag, action, json),
        Command::CheckConfig => cli::check_config(config_flag),
        Command::Model {
            action: ModelAction::Check { dir },
        } => cli::model_check(config_flag, &dir),
        Command::Demo { dir } => demo::run(dir.as_deref()),
        Command::Worker {
            job_dir,
            serve,
            idle_exit_secs,
        } => supervisor::worker_main(&job_dir, serve.then_some(idle_exit_secs)),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("reelspool: {err:#}");
            ExitCode::from(1)
        }
    }
}
