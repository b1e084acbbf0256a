//! Time-based one-time passwords (RFC 6238: HMAC-SHA1, 6 digits, 30-second steps, as every
//! authenticator app reads them) and one-time recovery codes.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

const STEP_SECONDS: i64 = 30;
const DIGITS: u32 = 6;

/// A new secret: 160 random bits, as RFC 4226 recommends.
pub fn new_secret() -> Vec<u8> {
    rand::random::<[u8; 20]>().to_vec()
}

/// The secret as authenticator apps take it typed in: base32 without padding.
pub fn secret_text(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

pub fn secret_from_text(text: &str) -> Option<Vec<u8>> {
    data_encoding::BASE32_NOPAD.decode(text.as_bytes()).ok()
}

/// The `otpauth://` URI the QR code carries.
pub fn uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let escape = |text: &str| {
        text.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
        escape(issuer),
        escape(account),
        secret_text(secret),
        escape(issuer)
    )
}

/// The code for one time step (RFC 4226's HOTP of the step counter).
pub fn code_at_step(secret: &[u8], step: i64) -> String {
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[digest.len() - 1] & 0x0f);
    let binary = (u32::from(digest[offset] & 0x7f) << 24)
        | (u32::from(digest[offset + 1]) << 16)
        | (u32::from(digest[offset + 2]) << 8)
        | u32::from(digest[offset + 3]);
    format!(
        "{:0width$}",
        binary % 10u32.pow(DIGITS),
        width = DIGITS as usize
    )
}

pub fn step_of(unix_ms: i64) -> i64 {
    unix_ms.div_euclid(1000).div_euclid(STEP_SECONDS)
}

/// The step a presented code matches, within one step either side (clocks drift), and only
/// after `last_used_step` (a code works once).
pub fn verify(secret: &[u8], code: &str, now_ms: i64, last_used_step: Option<i64>) -> Option<i64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let now = step_of(now_ms);
    let mut matched = None;
    // Every candidate is computed and compared, so the time taken says nothing.
    for step in [now - 1, now, now + 1] {
        let expected = code_at_step(secret, step);
        if crate::tokens::constant_time_eq(expected.as_bytes(), code.as_bytes())
            && last_used_step.is_none_or(|last| step > last)
        {
            matched = Some(step);
        }
    }
    matched
}

/// Ten recovery codes, shown once (`xxxxx-xxxxx`), with the hashes that are kept.
pub fn recovery_codes() -> (Vec<String>, Vec<String>) {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
    let mut shown = Vec::new();
    for _ in 0..10 {
        let bytes: [u8; 10] = rand::random();
        let text: String = bytes
            .iter()
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
            .collect();
        shown.push(format!("{}-{}", &text[..5], &text[5..]));
    }
    let kept = shown.iter().map(|c| recovery_hash(c)).collect();
    (shown, kept)
}

/// How a recovery code is kept: SHA-256 of its normal form (lower case, no spaces or dashes).
pub fn recovery_hash(code: &str) -> String {
    let normal: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    hex::encode(Sha256::digest(normal.as_bytes()))
}

/// The QR code of `text` as an SVG image, for the enrolment page (no script, no network).
pub fn qr_svg(text: &str) -> Option<String> {
    let code = qrcode::QrCode::new(text.as_bytes()).ok()?;
    Some(
        code.render::<qrcode::render::svg::Color<'_>>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_match_rfc_6238s_sha1_test_vectors() {
        // RFC 6238, appendix B: the ASCII secret "12345678901234567890", 8 digits there;
        // the 6-digit codes are their last six.
        let secret = b"12345678901234567890";
        for (unix, eight) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
        ] {
            assert_eq!(
                code_at_step(secret, step_of(unix * 1000)),
                eight[2..],
                "{unix}"
            );
        }
    }

    #[test]
    fn a_code_works_once_and_only_near_its_time() {
        let secret = new_secret();
        let now = 1_700_000_000_000;
        let code = code_at_step(&secret, step_of(now));
        let step = verify(&secret, &code, now, None).unwrap();
        assert_eq!(verify(&secret, &code, now, Some(step)), None, "replayed");
        assert!(
            verify(&secret, &code, now + 30_000, None).is_some(),
            "a step late"
        );
        assert_eq!(verify(&secret, &code, now + 90_000, None), None, "too late");
        assert_eq!(verify(&secret, "12345", now, None), None);
        assert_eq!(secret_from_text(&secret_text(&secret)).unwrap(), secret);
        let uri = uri("berth", "alice", &secret);
        assert!(
            uri.starts_with("otpauth://totp/berth:alice?secret="),
            "{uri}"
        );
        assert!(qr_svg(&uri).unwrap().starts_with("<?xml"));
    }

    #[test]
    fn recovery_codes_are_kept_hashed_and_read_loosely() {
        let (shown, kept) = recovery_codes();
        assert_eq!(shown.len(), 10);
        assert_eq!(
            recovery_hash(&shown[0].to_uppercase().replace('-', " ")),
            kept[0]
        );
        assert!(!kept.contains(&shown[0]));
    }
}
