//! The Standard Webhooks headers (<https://www.standardwebhooks.com/>), sent
//! next to our own `X-Reelspool-*` ones so that receivers can verify a
//! delivery with a stock library (`standardwebhooks` on PyPI and npm, and
//! its ports to other languages).
//!
//! - `webhook-id`: the delivery id, the same on every retry.
//! - `webhook-timestamp`: Unix seconds of the attempt (the same value as
//!   `X-Reelspool-Timestamp`).
//! - `webhook-signature`: present when the webhook has a secret;
//!   `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`, one entry per
//!   signing key, separated by single spaces (two during a rotation).
//!
//! Keys: a secret written as `whsec_<base64>` is the spec's form; the key is
//! the bytes the base64 decodes to. Any other secret is used as it is, byte
//! for byte, as for `X-Reelspool-Signature`.

use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

/// Header carrying the delivery id, as the Standard Webhooks spec names it.
pub const HEADER_WEBHOOK_ID: &str = "webhook-id";
/// Header carrying the attempt's Unix time in seconds.
pub const HEADER_WEBHOOK_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying the space-separated `v1,<base64>` signatures.
pub const HEADER_WEBHOOK_SIGNATURE: &str = "webhook-signature";

/// The prefix of a secret in the spec's form.
pub const SECRET_PREFIX: &str = "whsec_";

/// Standard base64, padding optional when decoding (the reference libraries
/// accept both) and written when encoding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The HMAC key a configured secret stands for: the decoded bytes of a
/// `whsec_<base64>` secret, or the secret itself.
pub(crate) fn signing_key(secret: &Secret, name: &str) -> Result<Secret, String> {
    let bytes = secret.expose();
    let Some(encoded) = bytes.strip_prefix(SECRET_PREFIX.as_bytes()) else {
        return Ok(secret.clone());
    };
    // Never name the offending bytes: they are (part of) the secret.
    let key = BASE64.decode(encoded.trim_ascii()).map_err(|_| {
        format!(
            "webhook secret {name:?} starts with {SECRET_PREFIX} but the rest is not base64; \
             write whsec_ followed by the key in standard base64, or use a secret without the prefix"
        )
    })?;
    if key.is_empty() {
        return Err(format!(
            "webhook secret {name:?} is {SECRET_PREFIX} with no key after it"
        ));
    }
    Ok(Secret::new(key))
}

/// One `v1,<base64>` signature of `body` sent as delivery `id` at
/// `timestamp_secs`, keyed with `key`: a plain secret's bytes, or the bytes
/// a `whsec_<base64>` secret decodes to.
pub fn standard_signature(key: &[u8], id: &str, timestamp_secs: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .expect("invariant: HMAC accepts keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_secs.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// The `webhook-signature` value: one signature per key, space-separated,
/// in the order given (current key first).
pub(crate) fn signature_header(
    keys: &[Secret],
    id: &str,
    timestamp_secs: u64,
    body: &[u8],
) -> String {
    keys.iter()
        .map(|key| standard_signature(key.expose(), id, timestamp_secs, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example of the Standard Webhooks reference libraries; the expected value was
    // recomputed with `openssl dgst -sha256 -mac HMAC -macopt hexkey:<decoded key> -binary |
    // base64` over `msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330.{"test": 2432232314}`.
    const SPEC_SECRET: &[u8] = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TIMESTAMP: u64 = 1_614_265_330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn key_of(secret: &[u8]) -> Result<Secret, String> {
        signing_key(&Secret::new(secret.to_vec()), "HOOK")
    }

    #[test]
    fn whsec_secret_signs_like_the_reference_libraries() {
        let key = key_of(SPEC_SECRET).expect("valid whsec secret");
        assert_eq!(
            standard_signature(key.expose(), SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY),
            SPEC_SIGNATURE
        );
    }

    #[test]
    fn whsec_secret_decodes_with_or_without_padding() {
        // 4 key bytes encode to 8 characters with two `=`; both spellings are the same key.
        let padded = key_of(b"whsec_AAECAw==").expect("padded");
        let unpadded = key_of(b"whsec_AAECAw").expect("unpadded");
        assert_eq!(padded.expose(), &[0, 1, 2, 3]);
        assert_eq!(unpadded.expose(), &[0, 1, 2, 3]);
    }

    #[test]
    fn plain_secret_is_used_byte_for_byte() {
        let key = key_of(b"s3cret-for-tests").expect("plain secret");
        assert_eq!(key.expose(), b"s3cret-for-tests");
    }

    #[test]
    fn broken_whsec_secret_is_refused_without_showing_it() {
        let err = key_of(b"whsec_not*base64!").expect_err("not base64");
        assert!(err.contains("not base64"), "{err}");
        assert!(!err.contains("not*base64!"), "the secret leaked: {err}");
        let err = key_of(b"whsec_").expect_err("no key");
        assert!(err.contains("no key"), "{err}");
    }

    #[test]
    fn rotation_sends_one_signature_per_key_current_first() {
        let current = key_of(SPEC_SECRET).expect("valid");
        let previous = key_of(b"old-plain-secret").expect("plain");
        let header = signature_header(
            &[current, previous.clone()],
            SPEC_ID,
            SPEC_TIMESTAMP,
            SPEC_BODY,
        );
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2, "{header}");
        assert_eq!(parts[0], SPEC_SIGNATURE);
        assert_eq!(
            parts[1],
            standard_signature(b"old-plain-secret", SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY)
        );
        assert_ne!(parts[0], parts[1]);
    }

    #[test]
    fn signature_covers_id_timestamp_and_body() {
        let base = standard_signature(b"k", "id-1", 1_700_000_000, b"{}");
        assert_ne!(base, standard_signature(b"k", "id-2", 1_700_000_000, b"{}"));
        assert_ne!(base, standard_signature(b"k", "id-1", 1_700_000_001, b"{}"));
        assert_ne!(base, standard_signature(b"k", "id-1", 1_700_000_000, b"[]"));
    }
}
