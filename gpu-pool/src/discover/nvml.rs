//! Asking the NVIDIA driver (through NVML) which cards exist and how they are.
//!
//! The code that talks to NVML only copies answers into plain structs ([`DeviceId`],
//! [`NvmlReading`]); the decisions (which cards to use, whether a card is healthy) are pure
//! functions over those structs. That split is what lets the decisions be tested on machines
//! without a GPU, CI included, where NVML cannot even be loaded.

use nvml_wrapper::enum_wrappers::device::{
    EccCounter, MemoryError, RetirementCause, TemperatureSensor,
};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::{Device, Nvml};

use super::{GpuInfo, GpuKind};
use crate::config::DeviceSelector;
use crate::PoolError;

/// Who a card is, read before anything else so that excluded cards are not queried further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeviceId {
    pub index: u32,
    /// `None` when NVML could not tell (the card may be lost).
    pub uuid: Option<String>,
}

/// Everything discovery reads from one card, as plain data.
///
/// An `Err(text)` or `None` means NVML could not answer: unsupported on this card, or the card
/// stopped responding. [`interpret_reading`] decides what each gap means.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NvmlReading {
    pub index: u32,
    pub uuid: Result<String, String>,
    pub name: Option<String>,
    pub pci_bus_id: Option<String>,
    /// `(total, free)` bytes.
    pub memory: Result<(u64, u64), String>,
    pub utilization_percent: Option<u32>,
    pub temperature_c: Option<u32>,
    /// Uncorrectable ECC errors since the driver loaded; `None` where ECC is off or unsupported.
    pub ecc_uncorrected_volatile: Option<u64>,
    /// Pages already retired for either cause; `None` where unsupported.
    pub retired_pages: Option<u64>,
    /// Pages waiting for a reset to be retired; `None` where unsupported.
    pub pages_pending_retirement: Option<bool>,
    /// Compute processes as `(pid, bytes)`; bytes are `None` where the driver does not say.
    pub processes: Vec<(u32, Option<u64>)>,
}

/// Lists the selected NVML cards.
pub(super) fn discover(
    include: Option<&[DeviceSelector]>,
    exclude: &[DeviceSelector],
) -> Result<Vec<GpuInfo>, PoolError> {
    let nvml = Nvml::init().map_err(unavailable)?;
    let count = nvml.device_count().map_err(|err| PoolError::NvmlQuery {
        what: "count the GPUs".to_string(),
        reason: err.to_string(),
    })?;
    let ids: Vec<DeviceId> = (0..count)
        .map(|index| DeviceId {
            index,
            uuid: nvml.device_by_index(index).and_then(|d| d.uuid()).ok(),
        })
        .collect();
    let selected = select_devices(&ids, include, exclude)?;
    Ok(selected
        .into_iter()
        .map(|index| interpret_reading(read_device(&nvml, index)))
        .collect())
}

/// Any failure to start NVML means the same to the operator: no driver to talk to.
fn unavailable(err: NvmlError) -> PoolError {
    PoolError::NvmlUnavailable {
        reason: err.to_string(),
    }
}

fn read_device(nvml: &Nvml, index: u32) -> NvmlReading {
    match nvml.device_by_index(index) {
        Ok(device) => read_open_device(index, &device),
        Err(err) => NvmlReading {
            index,
            uuid: Err(err.to_string()),
            name: None,
            pci_bus_id: None,
            memory: Err(err.to_string()),
            utilization_percent: None,
            temperature_c: None,
            ecc_uncorrected_volatile: None,
            retired_pages: None,
            pages_pending_retirement: None,
            processes: Vec::new(),
        },
    }
}

fn read_open_device(index: u32, device: &Device<'_>) -> NvmlReading {
    let text = |err: NvmlError| err.to_string();
    let retired = |cause| device.retired_pages(cause).map(|pages| pages.len() as u64);
    let retired_pages = match (
        retired(RetirementCause::MultipleSingleBitEccErrors),
        retired(RetirementCause::DoubleBitEccError),
    ) {
        (Ok(single), Ok(double)) => Some(single + double),
        _ => None,
    };
    NvmlReading {
        index,
        uuid: device.uuid().map_err(text),
        name: device.name().ok(),
        pci_bus_id: device.pci_info().map(|pci| pci.bus_id).ok(),
        memory: device
            .memory_info()
            .map(|memory| (memory.total, memory.free))
            .map_err(text),
        utilization_percent: device.utilization_rates().map(|u| u.gpu).ok(),
        temperature_c: device.temperature(TemperatureSensor::Gpu).ok(),
        ecc_uncorrected_volatile: device
            .total_ecc_errors(MemoryError::Uncorrected, EccCounter::Volatile)
            .ok(),
        retired_pages,
        pages_pending_retirement: device.are_pages_pending_retired().ok(),
        processes: device
            .running_compute_processes()
            .map(|processes| {
                processes
                    .into_iter()
                    .map(|process| {
                        let bytes = match process.used_gpu_memory {
                            UsedGpuMemory::Used(bytes) => Some(bytes),
                            UsedGpuMemory::Unavailable => None,
                        };
                        (process.pid, bytes)
                    })
                    .collect()
            })
            .unwrap_or_default(),
    }
}

fn matches(selector: &DeviceSelector, id: &DeviceId) -> bool {
    match selector {
        DeviceSelector::Index(index) => *index == id.index,
        DeviceSelector::Uuid(uuid) => id.uuid.as_deref() == Some(uuid.as_str()),
    }
}

/// Which card indexes the pool uses: those `include` names (all when `None`), minus those
/// `exclude` names.
///
/// An `include` entry that matches nothing is an error, because a typo there would silently
/// shrink the pool; an `exclude` entry that matches nothing only earns a warning, because
/// leaving out a card that is not there is harmless.
pub(crate) fn select_devices(
    ids: &[DeviceId],
    include: Option<&[DeviceSelector]>,
    exclude: &[DeviceSelector],
) -> Result<Vec<u32>, PoolError> {
    if ids.is_empty() {
        return Err(PoolError::EmptyPool {
            why: "NVML reports no GPU".to_string(),
            help: "check `nvidia-smi -L`, or set `gpu_pool.kind: simulated` or `cpu`".to_string(),
        });
    }
    let available = || {
        ids.iter()
            .map(|id| format!("{} ({})", id.index, id.uuid.as_deref().unwrap_or("no UUID")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(include) = include {
        if let Some(unknown) = include
            .iter()
            .find(|s| !ids.iter().any(|id| matches(s, id)))
        {
            return Err(PoolError::UnknownDevice {
                selector: unknown.to_string(),
                available: available(),
            });
        }
    }
    for unknown in exclude
        .iter()
        .filter(|s| !ids.iter().any(|id| matches(s, id)))
    {
        tracing::warn!(selector = %unknown, "gpu_pool.exclude names no GPU of this machine");
    }
    let kept: Vec<u32> = ids
        .iter()
        .filter(|id| include.is_none_or(|include| include.iter().any(|s| matches(s, id))))
        .filter(|id| !exclude.iter().any(|s| matches(s, id)))
        .map(|id| id.index)
        .collect();
    if kept.is_empty() {
        return Err(PoolError::EmptyPool {
            why: format!("include/exclude leave none of the GPUs: {}", available()),
            help: "shorten `gpu_pool.exclude` or widen `gpu_pool.include`".to_string(),
        });
    }
    Ok(kept)
}

/// Turns what NVML said about a card into a [`GpuInfo`], deciding whether it is healthy.
///
/// Unhealthy (no new jobs): the UUID or memory cannot be read (the card is lost or the driver
/// is wedged), uncorrectable ECC errors occurred since the driver loaded (results computed on
/// the card may be wrong), or memory pages wait to be retired (they are retired only at the
/// next reset, and until then the bad memory is still handed out). Already-retired pages only
/// earn a note: the driver has fenced them off, and the card keeps working.
pub(crate) fn interpret_reading(reading: NvmlReading) -> GpuInfo {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let uuid = match reading.uuid {
        Ok(uuid) => uuid,
        Err(err) => {
            problems.push(format!(
                "cannot read its UUID ({err}); the card may have fallen off the bus"
            ));
            format!("nvml-index-{}", reading.index)
        }
    };
    let (memory_total_bytes, memory_free_bytes) = match reading.memory {
        Ok(memory) => memory,
        Err(err) => {
            problems.push(format!("cannot read its memory ({err})"));
            (0, 0)
        }
    };
    if let Some(errors @ 1..) = reading.ecc_uncorrected_volatile {
        problems.push(format!(
            "{errors} uncorrectable ECC errors since the driver loaded; reset the card \
             (`nvidia-smi -r -i {}`) and replace it if they return",
            reading.index
        ));
    }
    if reading.pages_pending_retirement == Some(true) {
        problems.push(format!(
            "memory pages wait to be retired; reset the card (`nvidia-smi -r -i {}`) or reboot",
            reading.index
        ));
    }
    if let Some(pages @ 1..) = reading.retired_pages {
        warnings.push(format!(
            "{pages} memory pages retired (fenced off; watch for more)"
        ));
    }
    let healthy = problems.is_empty();
    let notes: Vec<String> = problems.into_iter().chain(warnings).collect();
    GpuInfo {
        index: reading.index,
        uuid,
        name: reading
            .name
            .unwrap_or_else(|| "unknown NVIDIA GPU".to_string()),
        pci_bus_id: reading.pci_bus_id,
        memory_total_bytes,
        memory_free_bytes,
        utilization_percent: reading.utilization_percent,
        temperature_c: reading.temperature_c,
        healthy,
        health_note: (!notes.is_empty()).then(|| notes.join("; ")),
        foreign_processes: reading
            .processes
            .into_iter()
            .map(|(pid, bytes)| (pid, bytes.unwrap_or(0)))
            .collect(),
        kind: GpuKind::Nvml,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> Vec<DeviceId> {
        (0..3)
            .map(|index| DeviceId {
                index,
                uuid: Some(format!("GPU-{index}")),
            })
            .collect()
    }

    fn good_reading() -> NvmlReading {
        NvmlReading {
            index: 1,
            uuid: Ok("GPU-1".into()),
            name: Some("NVIDIA A100-SXM4-80GB".into()),
            pci_bus_id: Some("00000000:41:00.0".into()),
            memory: Ok((80 << 30, 79 << 30)),
            utilization_percent: Some(3),
            temperature_c: Some(41),
            ecc_uncorrected_volatile: Some(0),
            retired_pages: Some(0),
            pages_pending_retirement: Some(false),
            processes: vec![(4242, Some(1 << 30)), (4343, None)],
        }
    }

    #[test]
    fn no_filters_keep_every_card() {
        assert_eq!(select_devices(&ids(), None, &[]).expect("ok"), [0, 1, 2]);
    }

    #[test]
    fn include_by_uuid_and_exclude_by_index_combine() {
        let include = [
            DeviceSelector::Uuid("GPU-0".into()),
            DeviceSelector::Index(2),
        ];
        let kept = select_devices(&ids(), Some(&include), &[DeviceSelector::Index(0)]);
        assert_eq!(kept.expect("ok"), [2]);
    }

    #[test]
    fn include_naming_a_missing_card_lists_the_real_ones() {
        let err = select_devices(&ids(), Some(&[DeviceSelector::Index(7)]), &[])
            .expect_err("card 7 does not exist");
        let text = err.to_string();
        assert!(text.contains("`7`") && text.contains("2 (GPU-2)"), "{text}");
    }

    #[test]
    fn excluding_every_card_is_an_empty_pool() {
        let all: Vec<_> = (0..3).map(DeviceSelector::Index).collect();
        let err = select_devices(&ids(), None, &all).expect_err("nothing left");
        assert!(matches!(err, PoolError::EmptyPool { .. }), "{err}");
    }

    #[test]
    fn a_machine_without_cards_is_an_empty_pool() {
        let err = select_devices(&[], None, &[]).expect_err("no cards");
        assert!(err.to_string().contains("NVML reports no GPU"), "{err}");
    }

    #[test]
    fn clean_card_is_healthy_without_a_note() {
        let info = interpret_reading(good_reading());
        assert!(info.healthy);
        assert_eq!(info.health_note, None);
        assert_eq!(info.memory_free_bytes, 79 << 30);
        assert_eq!(info.foreign_processes, [(4242, 1 << 30), (4343, 0)]);
        assert_eq!(info.kind, GpuKind::Nvml);
    }

    #[test]
    fn uncorrectable_ecc_errors_make_a_card_unhealthy() {
        let info = interpret_reading(NvmlReading {
            ecc_uncorrected_volatile: Some(2),
            ..good_reading()
        });
        assert!(!info.healthy);
        let note = info.health_note.expect("a reason");
        assert!(note.contains("2 uncorrectable ECC") && note.contains("nvidia-smi -r -i 1"));
    }

    #[test]
    fn pending_page_retirement_makes_a_card_unhealthy() {
        let info = interpret_reading(NvmlReading {
            pages_pending_retirement: Some(true),
            ..good_reading()
        });
        assert!(!info.healthy);
    }

    #[test]
    fn retired_pages_only_warn() {
        let info = interpret_reading(NvmlReading {
            retired_pages: Some(5),
            ..good_reading()
        });
        assert!(info.healthy);
        assert!(info
            .health_note
            .expect("a warning")
            .contains("5 memory pages retired"));
    }

    #[test]
    fn unsupported_health_queries_do_not_count_against_a_card() {
        let info = interpret_reading(NvmlReading {
            ecc_uncorrected_volatile: None,
            retired_pages: None,
            pages_pending_retirement: None,
            ..good_reading()
        });
        assert!(info.healthy);
    }

    #[test]
    fn unreadable_uuid_marks_a_lost_card() {
        let info = interpret_reading(NvmlReading {
            uuid: Err("GPU is lost".into()),
            ..good_reading()
        });
        assert!(!info.healthy);
        assert_eq!(info.uuid, "nvml-index-1");
        assert!(info
            .health_note
            .expect("reason")
            .contains("fallen off the bus"));
    }

    #[test]
    fn missing_library_error_says_what_to_do() {
        let text = unavailable(NvmlError::LibraryNotFound).to_string();
        assert!(text.contains("install the NVIDIA driver"), "{text}");
        assert!(text.contains("gpu_pool.kind: simulated"), "{text}");
    }

    #[test]
    fn discovery_lists_cards_or_explains_the_missing_driver() {
        match discover(None, &[]) {
            Ok(devices) => assert!(devices.iter().all(|d| d.kind == GpuKind::Nvml)),
            Err(err @ PoolError::NvmlUnavailable { .. }) => {
                assert!(err.to_string().contains("gpu_pool.kind: cpu"), "{err}")
            }
            Err(err) => panic!("unexpected discovery error: {err}"),
        }
    }
}
