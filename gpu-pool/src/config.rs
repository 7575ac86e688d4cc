//! The `gpu_pool:` section of the daemon config: where jobs may run.
//!
//! ```yaml
//! gpu_pool:
//!   kind: nvml                 # cpu (default) | simulated | nvml
//!   include: [0, "GPU-8f3c…"]  # nvml only: indexes or UUIDs to use (default: all)
//!   exclude: [3]               # nvml only: indexes or UUIDs to leave alone
//!   external_use_threshold_mb: 1024
//!   failure_drain_threshold: 3
//! ```
//!
//! `kind: cpu` (with `slots: N`, default 1) runs jobs on the CPU, N at a time: the demo and the
//! tests need no GPU. `kind: simulated` (with a `gpus:` list) pretends the listed cards exist,
//! so placement can be tried and benchmarked on any machine. `kind: nvml` asks the driver.
//!
//! The section is parsed through a flat raw struct and then checked, rather than as a tagged
//! enum, for two reasons: `kind` may be left out (it defaults to `cpu`), and a key that belongs
//! to another kind (`gpus:` under `kind: nvml`) deserves a message naming the kind it belongs
//! to, not serde's generic "unknown field".

use serde::{Deserialize, Serialize};

/// Where the pool's devices come from.
#[derive(Debug, Clone, PartialEq)]
pub enum PoolSource {
    /// `slots` CPU job slots; no GPU is used.
    Cpu { slots: u32 },
    /// Cards that do not exist, for trying placement anywhere.
    Simulated { gpus: Vec<SimulatedGpu> },
    /// The machine's NVIDIA GPUs, as NVML reports them.
    Nvml {
        include: Option<Vec<DeviceSelector>>,
        exclude: Vec<DeviceSelector>,
        external_use_threshold_mb: u64,
    },
}

/// One simulated card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedGpu {
    /// A model name, only shown to people (`"RTX 4090"`).
    pub name: String,
    /// Memory in GB as GPU vendors count it, which is GiB (2^30 bytes): `24` is what
    /// `nvidia-smi` shows for a "24 GB" card, to within the driver's reserve.
    pub memory_gb: f64,
    /// A fixed UUID; by default `GPU-sim-<index>-<name>-<memory>g`, which stays the same from
    /// one start to the next so persisted leases still name the same card.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

/// A GPU named in `include:`/`exclude:`: its NVML index or its UUID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DeviceSelector {
    /// The index NVML gives the card (PCI bus order, like `nvidia-smi`).
    Index(u32),
    /// The card's UUID (`GPU-…`), which survives reboots and re-cabling.
    Uuid(String),
}

impl std::fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSelector::Index(index) => write!(f, "{index}"),
            DeviceSelector::Uuid(uuid) => f.write_str(uuid),
        }
    }
}

/// The whole `gpu_pool:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawPoolConfig", into = "RawPoolConfig")]
pub struct PoolConfig {
    /// Which devices jobs run on.
    pub source: PoolSource,
    /// A card whose jobs fail this many times in a row is drained (taken out of placement)
    /// until an operator undrains it: a card that keeps failing is more likely broken than
    /// every job sent to it.
    pub failure_drain_threshold: u32,
    /// `host_memory_gb:`, the host's memory that jobs holding weights in host RAM share
    /// (GiB). Left out, NVML and CPU pools read the machine's `MemTotal`; a simulated pool
    /// then does not count host memory.
    pub host_memory_gb: Option<f64>,
}

/// Default for `external_use_threshold_mb`: a desktop session or a monitoring agent uses a few
/// hundred MB; more than a GiB means someone else is computing on the card.
pub const DEFAULT_EXTERNAL_USE_THRESHOLD_MB: u64 = 1024;
/// Default for `failure_drain_threshold`.
pub const DEFAULT_FAILURE_DRAIN_THRESHOLD: u32 = 3;

impl Default for PoolConfig {
    /// One CPU slot: the daemon works out of the box on a machine without a GPU.
    fn default() -> Self {
        PoolConfig {
            source: PoolSource::Cpu { slots: 1 },
            failure_drain_threshold: DEFAULT_FAILURE_DRAIN_THRESHOLD,
            host_memory_gb: None,
        }
    }
}

impl PoolConfig {
    /// The host memory jobs share, in bytes: `host_memory_gb` when given, else the machine's
    /// `MemTotal` for NVML and CPU pools; `None` for a simulated pool that declares none.
    pub fn host_memory_bytes(&self) -> Option<u64> {
        if let Some(gib) = self.host_memory_gb {
            return Some((gib * crate::GIB as f64) as u64);
        }
        match self.source {
            PoolSource::Simulated { .. } => None,
            PoolSource::Cpu { .. } | PoolSource::Nvml { .. } => machine_memory_bytes(),
        }
    }

    /// Bytes other processes may hold on an NVML card before it counts as in external use;
    /// `None` for pools that have no other processes to see.
    pub fn external_use_threshold_bytes(&self) -> Option<u64> {
        match &self.source {
            PoolSource::Nvml {
                external_use_threshold_mb,
                ..
            } => Some(external_use_threshold_mb.saturating_mul(1 << 20)),
            _ => None,
        }
    }
}

/// The section as written, before it is checked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoolConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<PoolKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    slots: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gpus: Option<Vec<SimulatedGpu>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    include: Option<Vec<DeviceSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exclude: Option<Vec<DeviceSelector>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    external_use_threshold_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    failure_drain_threshold: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_memory_gb: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum PoolKind {
    Cpu,
    Simulated,
    Nvml,
}

impl PoolKind {
    fn name(self) -> &'static str {
        match self {
            PoolKind::Cpu => "cpu",
            PoolKind::Simulated => "simulated",
            PoolKind::Nvml => "nvml",
        }
    }
}

/// Refuses a key that only another kind of pool reads.
fn only_for(present: bool, key: &str, owner: &str, kind: PoolKind) -> Result<(), String> {
    if present {
        Err(format!(
            "`{key}` belongs to `kind: {owner}`, but this pool is `kind: {}`; remove it or change `kind`",
            kind.name()
        ))
    } else {
        Ok(())
    }
}

impl TryFrom<RawPoolConfig> for PoolConfig {
    type Error = String;

    fn try_from(raw: RawPoolConfig) -> Result<Self, String> {
        let kind = raw.kind.unwrap_or(PoolKind::Cpu);
        let failure_drain_threshold = raw
            .failure_drain_threshold
            .unwrap_or(DEFAULT_FAILURE_DRAIN_THRESHOLD);
        if failure_drain_threshold == 0 {
            return Err("`failure_drain_threshold` must be at least 1".to_string());
        }
        let nvml_keys = [
            (raw.include.is_some(), "include"),
            (raw.exclude.is_some(), "exclude"),
            (
                raw.external_use_threshold_mb.is_some(),
                "external_use_threshold_mb",
            ),
        ];
        if kind != PoolKind::Nvml {
            for (present, key) in nvml_keys {
                only_for(present, key, "nvml", kind)?;
            }
        }
        if kind != PoolKind::Cpu {
            only_for(raw.slots.is_some(), "slots", "cpu", kind)?;
        }
        if kind != PoolKind::Simulated {
            only_for(raw.gpus.is_some(), "gpus", "simulated", kind)?;
        }
        let source = match kind {
            PoolKind::Cpu => {
                let slots = raw.slots.unwrap_or(1);
                if slots == 0 {
                    return Err("`slots` must be at least 1".to_string());
                }
                PoolSource::Cpu { slots }
            }
            PoolKind::Simulated => {
                let gpus = raw.gpus.unwrap_or_default();
                check_simulated(&gpus)?;
                PoolSource::Simulated { gpus }
            }
            PoolKind::Nvml => PoolSource::Nvml {
                include: raw.include,
                exclude: raw.exclude.unwrap_or_default(),
                external_use_threshold_mb: raw
                    .external_use_threshold_mb
                    .unwrap_or(DEFAULT_EXTERNAL_USE_THRESHOLD_MB),
            },
        };
        if let Some(gib) = raw.host_memory_gb {
            if !(gib.is_finite() && gib > 0.0) {
                return Err(format!(
                    "`host_memory_gb` must be a positive number of GiB, not {gib}"
                ));
            }
        }
        Ok(PoolConfig {
            source,
            failure_drain_threshold,
            host_memory_gb: raw.host_memory_gb,
        })
    }
}

/// `MemTotal` of `/proc/meminfo`, if it can be read.
pub fn machine_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

fn check_simulated(gpus: &[SimulatedGpu]) -> Result<(), String> {
    if gpus.is_empty() {
        return Err(
            "`kind: simulated` needs a `gpus:` list, e.g. `gpus: [{ name: RTX 4090, memory_gb: 24 }]`"
                .to_string(),
        );
    }
    for (index, gpu) in gpus.iter().enumerate() {
        if !(gpu.memory_gb.is_finite() && gpu.memory_gb > 0.0) {
            return Err(format!(
                "`gpus[{index}].memory_gb` must be a positive number, not {}",
                gpu.memory_gb
            ));
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for uuid in gpus.iter().filter_map(|gpu| gpu.uuid.as_deref()) {
        if !seen.insert(uuid) {
            return Err(format!("two simulated GPUs have the UUID `{uuid}`"));
        }
    }
    Ok(())
}

impl From<PoolConfig> for RawPoolConfig {
    fn from(config: PoolConfig) -> Self {
        let mut raw = RawPoolConfig {
            failure_drain_threshold: Some(config.failure_drain_threshold),
            host_memory_gb: config.host_memory_gb,
            ..RawPoolConfig::default()
        };
        match config.source {
            PoolSource::Cpu { slots } => {
                raw.kind = Some(PoolKind::Cpu);
                raw.slots = Some(slots);
            }
            PoolSource::Simulated { gpus } => {
                raw.kind = Some(PoolKind::Simulated);
                raw.gpus = Some(gpus);
            }
            PoolSource::Nvml {
                include,
                exclude,
                external_use_threshold_mb,
            } => {
                raw.kind = Some(PoolKind::Nvml);
                raw.include = include;
                raw.exclude = Some(exclude);
                raw.external_use_threshold_mb = Some(external_use_threshold_mb);
            }
        }
        raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PoolConfig, String> {
        serde_yaml::from_str::<PoolConfig>(text).map_err(|err| err.to_string())
    }

    #[test]
    fn missing_kind_means_one_cpu_slot() {
        let config = parse("{}").expect("an empty section is valid");
        assert_eq!(config.source, PoolSource::Cpu { slots: 1 });
        assert_eq!(config.failure_drain_threshold, 3);
    }

    #[test]
    fn simulated_pool_keeps_its_cards_in_order() {
        let config = parse(
            "kind: simulated\ngpus:\n  - { name: RTX 4090, memory_gb: 24 }\n  - { name: A100, memory_gb: 80, uuid: GPU-fixed }\n",
        )
        .expect("valid simulated pool");
        let PoolSource::Simulated { gpus } = config.source else {
            panic!("expected a simulated pool, got {:?}", config.source);
        };
        assert_eq!(gpus[0].name, "RTX 4090");
        assert_eq!(gpus[1].uuid.as_deref(), Some("GPU-fixed"));
    }

    #[test]
    fn nvml_selectors_accept_indexes_and_uuids() {
        let config = parse("kind: nvml\ninclude: [0, GPU-abc]\nexclude: [2]\n").expect("valid");
        let PoolSource::Nvml {
            include,
            exclude,
            external_use_threshold_mb,
        } = config.source
        else {
            panic!("expected nvml");
        };
        assert_eq!(
            include,
            Some(vec![
                DeviceSelector::Index(0),
                DeviceSelector::Uuid("GPU-abc".into())
            ])
        );
        assert_eq!(exclude, vec![DeviceSelector::Index(2)]);
        assert_eq!(external_use_threshold_mb, 1024);
    }

    #[test]
    fn key_of_another_kind_names_the_kind_it_belongs_to() {
        let err = parse("kind: nvml\ngpus: []\n").expect_err("gpus is not an nvml key");
        assert!(err.contains("`gpus` belongs to `kind: simulated`"), "{err}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = parse("kind: cpu\nslot: 2\n").expect_err("typo must be caught");
        assert!(err.contains("unknown field `slot`"), "{err}");
    }

    #[test]
    fn zero_slots_are_refused() {
        let err = parse("slots: 0").expect_err("zero slots");
        assert!(err.contains("at least 1"), "{err}");
    }

    #[test]
    fn host_memory_is_declared_or_read_from_the_machine() {
        let config = parse(
            "kind: simulated\nhost_memory_gb: 128\ngpus: [{ name: RTX 4090, memory_gb: 24 }]\n",
        )
        .expect("valid simulated pool");
        assert_eq!(config.host_memory_bytes(), Some(128 * crate::GIB));
        let undeclared =
            parse("kind: simulated\ngpus: [{ name: RTX 4090, memory_gb: 24 }]\n").expect("valid");
        assert_eq!(undeclared.host_memory_bytes(), None);
        let cpu = parse("kind: cpu\n").expect("valid");
        assert!(cpu.host_memory_bytes().is_some_and(|bytes| bytes > 0));
        let err = parse("kind: cpu\nhost_memory_gb: -1\n").expect_err("negative");
        assert!(err.contains("host_memory_gb"), "{err}");
    }

    #[test]
    fn simulated_without_cards_is_refused() {
        let err = parse("kind: simulated").expect_err("no cards");
        assert!(err.contains("needs a `gpus:` list"), "{err}");
    }

    #[test]
    fn duplicate_simulated_uuid_is_refused() {
        let err = parse(
            "kind: simulated\ngpus: [{name: a, memory_gb: 1, uuid: X}, {name: b, memory_gb: 1, uuid: X}]",
        )
        .expect_err("duplicate");
        assert!(err.contains("UUID `X`"), "{err}");
    }

    #[test]
    fn config_survives_a_serialize_round_trip() {
        let config =
            parse("kind: nvml\nexclude: [GPU-x]\nfailure_drain_threshold: 5\n").expect("valid");
        let text = serde_yaml::to_string(&config).expect("serializable");
        assert_eq!(parse(&text), Ok(config));
    }

    #[test]
    fn threshold_bytes_only_exist_for_nvml() {
        let nvml = parse("kind: nvml\nexternal_use_threshold_mb: 2").expect("valid");
        assert_eq!(nvml.external_use_threshold_bytes(), Some(2 * 1024 * 1024));
        assert_eq!(PoolConfig::default().external_use_threshold_bytes(), None);
    }
}
