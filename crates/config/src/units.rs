//! Human-friendly units in the config: durations ("500ms", "10s", "5m", "1h", "1d") and sizes
//! ("64KiB", "10MiB"), parsed by well-kept crates (humantime, bytesize).

use serde::{de, Deserialize, Deserializer};
use std::{fmt, time::Duration};

/// A duration written as text, such as `"10s"` or `"1h 30m"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct HumanDuration(pub Duration);

impl fmt::Debug for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(HumanDuration).map_err(|e| {
            de::Error::custom(format!(
                "invalid duration {s:?}: {e}; expected a number and a unit, such as \"500ms\", \"10s\", \"5m\", \"1h\" or \"1d\""
            ))
        })
    }
}

/// A size in bytes written as text, such as `"64KiB"` or `"10MiB"`; a bare integer is bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ByteSize(pub u64);

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", bytesize::ByteSize(self.0).to_string_as(true))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64KiB\" or \"10MiB\", or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ByteSize, E> {
                s.trim()
                    .parse::<bytesize::ByteSize>()
                    .map(|b| ByteSize(b.as_u64()))
                    .map_err(|e| {
                        E::custom(format!(
                            "invalid size {s:?}: {e}; expected a number and a unit, such as \"64KiB\" or \"10MiB\""
                        ))
                    })
            }
        }
        d.deserialize_any(V)
    }
}
