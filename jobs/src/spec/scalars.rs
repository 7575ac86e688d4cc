//! The job settings that are written in YAML as something other than their Rust shape:
//! a size as `"704*384"`, a clip count as `auto` or a number, offload as `auto` or a boolean.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A frame size in pixels. Written `W*H` as in the Live Avatar scripts; `WxH` is accepted too
/// because that is how everyone else writes sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Size {
    pub width: u32,
    pub height: u32,
}

impl Size {
    pub const fn new(width: u32, height: u32) -> Size {
        Size { width, height }
    }

    /// Pixels per frame; GPU memory grows roughly with pixels × frames.
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}*{}", self.width, self.height)
    }
}

/// Why a text is not a size; the message quotes the text and shows the expected form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SizeParseError(String);

impl fmt::Display for SizeParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a size; write WIDTH*HEIGHT, e.g. 704*384",
            self.0
        )
    }
}

impl std::error::Error for SizeParseError {}

impl FromStr for Size {
    type Err = SizeParseError;

    fn from_str(text: &str) -> Result<Size, SizeParseError> {
        let fail = || SizeParseError(text.to_string());
        let (w, h) = text.split_once(['*', 'x', 'X']).ok_or_else(fail)?;
        let number = |part: &str| {
            let part = part.trim();
            // u32::from_str accepts a leading '+'; a size never has one.
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(fail());
            }
            part.parse::<u32>().map_err(|_| fail())
        };
        Ok(Size::new(number(w)?, number(h)?))
    }
}

impl Serialize for Size {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size like 704*384")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_str(SizeVisitor)
    }
}

/// How many clips to render: enough to cover the audio, or a fixed number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NumClip {
    #[default]
    Auto,
    Count(u32),
}

impl Serialize for NumClip {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            NumClip::Auto => s.serialize_str("auto"),
            NumClip::Count(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for NumClip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NumClip, D::Error> {
        struct NumClipVisitor;
        impl Visitor<'_> for NumClipVisitor {
            type Value = NumClip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`auto` or a number of clips")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumClip, E> {
                u32::try_from(v)
                    .map(NumClip::Count)
                    .map_err(|_| E::custom(format!("num_clip {v} is far too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumClip, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "num_clip must be `auto` or a positive number, got {v}"
                    ))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NumClip, E> {
                if v == "auto" {
                    return Ok(NumClip::Auto);
                }
                match v.parse::<u64>() {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "num_clip must be `auto` or a number, got `{v}`"
                    ))),
                }
            }
        }
        d.deserialize_any(NumClipVisitor)
    }
}

/// How often the worker writes the carry (the state the next clip needs) to disk:
/// `Every(n)` after every `n`-th clip, `Auto` as often as keeps checkpoint writes at or below
/// 2 % of render time (measured while the job runs). Segments are durable after every clip
/// either way; a crash re-renders at most the clips since the newest carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckpointEvery {
    Auto,
    Every(u32),
}

impl Default for CheckpointEvery {
    /// After every clip: a crash costs at most the clip in progress. Right for carries that
    /// take milliseconds to write (the built-in tiny model, command engines); big native
    /// models should use `auto`.
    fn default() -> CheckpointEvery {
        CheckpointEvery::Every(1)
    }
}

impl fmt::Display for CheckpointEvery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointEvery::Auto => f.write_str("auto"),
            CheckpointEvery::Every(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for CheckpointEvery {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            CheckpointEvery::Auto => s.serialize_str("auto"),
            CheckpointEvery::Every(n) => s.serialize_u32(*n),
        }
    }
}

impl<'de> Deserialize<'de> for CheckpointEvery {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<CheckpointEvery, D::Error> {
        struct EveryVisitor;
        impl Visitor<'_> for EveryVisitor {
            type Value = CheckpointEvery;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`auto` or a number of clips")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<CheckpointEvery, E> {
                u32::try_from(v)
                    .map(CheckpointEvery::Every)
                    .map_err(|_| E::custom(format!("checkpoint_every {v} is far too large")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<CheckpointEvery, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!(
                        "checkpoint_every must be `auto` or a positive number, got {v}"
                    ))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CheckpointEvery, E> {
                if v == "auto" {
                    return Ok(CheckpointEvery::Auto);
                }
                match v.parse::<u64>() {
                    Ok(n) => self.visit_u64(n),
                    Err(_) => Err(E::custom(format!(
                        "checkpoint_every must be `auto` or a number, got `{v}`"
                    ))),
                }
            }
        }
        d.deserialize_any(EveryVisitor)
    }
}

/// Whether model weights live on the CPU between uses (fits small cards, ~4× slower).
/// `Auto` lets placement decide from the GPU it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Offload {
    #[default]
    Auto,
    On,
    Off,
}

impl Serialize for Offload {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Offload::Auto => s.serialize_str("auto"),
            Offload::On => s.serialize_bool(true),
            Offload::Off => s.serialize_bool(false),
        }
    }
}

impl<'de> Deserialize<'de> for Offload {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Offload, D::Error> {
        struct OffloadVisitor;
        impl Visitor<'_> for OffloadVisitor {
            type Value = Offload;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("auto, true or false")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Offload, E> {
                Ok(if v { Offload::On } else { Offload::Off })
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Offload, E> {
                match v {
                    "auto" => Ok(Offload::Auto),
                    "true" => Ok(Offload::On),
                    "false" => Ok(Offload::Off),
                    other => Err(E::custom(format!(
                        "offload must be auto, true or false, got `{other}`"
                    ))),
                }
            }
        }
        d.deserialize_any(OffloadVisitor)
    }
}

/// Where a native release job keeps its DiT blocks (`render.memory_mode`). Every mode makes
/// the same frames; `Auto` lets placement pick the fastest mode that fits the card it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryModeSetting {
    #[default]
    Auto,
    /// Every block on the card: fastest, needs the most device memory.
    Resident,
    /// As many blocks on the card as fit, the rest streamed from host memory.
    Hybrid,
    /// Every block in host memory, uploaded layer by layer: least device memory.
    Streamed,
}

impl MemoryModeSetting {
    /// The job file's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryModeSetting::Auto => "auto",
            MemoryModeSetting::Resident => "resident",
            MemoryModeSetting::Hybrid => "hybrid",
            MemoryModeSetting::Streamed => "streamed",
        }
    }
}

/// The precision of a native release job's DiT weights (`render.precision`). `Auto` is bf16
/// where it fits, else fp8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionSetting {
    #[default]
    Auto,
    Bf16,
    Fp8,
}

impl PrecisionSetting {
    /// The job file's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            PrecisionSetting::Auto => "auto",
            PrecisionSetting::Bf16 => "bf16",
            PrecisionSetting::Fp8 => "fp8",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn size_accepts_star_and_x_forms() {
        assert_eq!("688*368".parse(), Ok(Size::new(688, 368)));
        assert_eq!("688x368".parse(), Ok(Size::new(688, 368)));
        assert_eq!(" 704 * 384 ".parse(), Ok(Size::new(704, 384)));
    }

    #[test]
    fn size_rejects_other_shapes() {
        for bad in [
            "",
            "688",
            "688*",
            "*368",
            "688*368*2",
            "+688*368",
            "a*b",
            "-16*16",
        ] {
            assert!(bad.parse::<Size>().is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn size_error_quotes_the_text() {
        let err = "big".parse::<Size>().expect_err("not a size");
        assert!(err.to_string().contains("`big`"), "{err}");
    }

    #[test]
    fn num_clip_reads_auto_and_numbers() {
        assert_eq!(
            serde_yaml::from_str::<NumClip>("auto").ok(),
            Some(NumClip::Auto)
        );
        assert_eq!(
            serde_yaml::from_str::<NumClip>("12").ok(),
            Some(NumClip::Count(12))
        );
        assert!(serde_yaml::from_str::<NumClip>("-3").is_err());
        assert!(serde_yaml::from_str::<NumClip>("many").is_err());
        assert!(serde_yaml::from_str::<NumClip>("99999999999").is_err());
    }

    #[test]
    fn offload_reads_auto_and_booleans() {
        assert_eq!(
            serde_yaml::from_str::<Offload>("auto").ok(),
            Some(Offload::Auto)
        );
        assert_eq!(
            serde_yaml::from_str::<Offload>("true").ok(),
            Some(Offload::On)
        );
        assert_eq!(
            serde_yaml::from_str::<Offload>("false").ok(),
            Some(Offload::Off)
        );
        assert!(serde_yaml::from_str::<Offload>("sometimes").is_err());
    }

    #[test]
    fn checkpoint_every_reads_auto_and_numbers() {
        assert_eq!(
            serde_yaml::from_str::<CheckpointEvery>("auto").ok(),
            Some(CheckpointEvery::Auto)
        );
        assert_eq!(
            serde_yaml::from_str::<CheckpointEvery>("3").ok(),
            Some(CheckpointEvery::Every(3))
        );
        assert!(serde_yaml::from_str::<CheckpointEvery>("-1").is_err());
        assert!(serde_yaml::from_str::<CheckpointEvery>("often").is_err());
        let written = serde_yaml::to_string(&CheckpointEvery::Every(7)).expect("serializes");
        assert_eq!(written.trim(), "7");
    }

    proptest! {
        #[test]
        fn size_display_parses_back(w in any::<u32>(), h in any::<u32>()) {
            let size = Size::new(w, h);
            prop_assert_eq!(size.to_string().parse::<Size>(), Ok(size));
            prop_assert_eq!(format!("{w}x{h}").parse::<Size>(), Ok(size));
        }

        #[test]
        fn size_parse_never_panics(text in "\\PC{0,20}") {
            let _ = text.parse::<Size>();
        }

        #[test]
        fn size_yaml_round_trip(w in any::<u32>(), h in any::<u32>()) {
            let size = Size::new(w, h);
            let yaml = serde_yaml::to_string(&size).expect("a size serializes as a string");
            prop_assert_eq!(serde_yaml::from_str::<Size>(&yaml).ok(), Some(size));
        }
    }
}
