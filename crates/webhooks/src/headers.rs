//! Strict header access and timestamp parsing.

use http::{HeaderMap, HeaderName};

use crate::VerifyError;

/// The one value of header `name`, as ASCII text of at most `max_len` bytes.
///
/// Absent: `MissingHeader`. Repeated with different values, empty, longer than `max_len` or not
/// visible ASCII: `MalformedHeader` (an intermediary or attacker adding a second copy must not
/// be able to choose which one is checked). Identical repeats are harmless and accepted.
pub(crate) fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    label: &'static str,
    max_len: usize,
) -> Result<&'a str, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next().ok_or(VerifyError::MissingHeader(label))?;
    if values.any(|other| other != first) {
        return Err(VerifyError::MalformedHeader(label));
    }
    if first.is_empty() || first.len() > max_len {
        return Err(VerifyError::MalformedHeader(label));
    }
    first
        .to_str()
        .map_err(|_| VerifyError::MalformedHeader(label))
}

/// The longest timestamp accepted, in digits (unix seconds have 10 until the year 2286).
const MAX_TIMESTAMP_DIGITS: usize = 12;

/// Parses a unix timestamp in seconds: ASCII digits only, no sign, no leading zero, no
/// fraction, at most 12 digits. The canonical form matters because the timestamp's text is part
/// of the signed material.
pub(crate) fn timestamp(text: &str, label: &'static str) -> Result<i64, VerifyError> {
    let bytes = text.as_bytes();
    let canonical = !bytes.is_empty()
        && bytes.len() <= MAX_TIMESTAMP_DIGITS
        && bytes.iter().all(u8::is_ascii_digit)
        && (bytes.len() == 1 || bytes[0] != b'0');
    if !canonical {
        return Err(VerifyError::MalformedHeader(label));
    }
    text.parse()
        .map_err(|_| VerifyError::MalformedHeader(label))
}

/// Checks `ts` against `now` (both unix seconds) within `tolerance` seconds either way.
pub(crate) fn check_window(ts: i64, now: i64, tolerance: i64) -> Result<(), VerifyError> {
    let age = i128::from(now) - i128::from(ts);
    let tolerance = i128::from(tolerance);
    if age > tolerance {
        Err(VerifyError::TimestampTooOld)
    } else if -age > tolerance {
        Err(VerifyError::TimestampInFuture)
    } else {
        Ok(())
    }
}
