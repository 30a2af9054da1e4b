//! Secrets: session tokens, license keys, the admin token. Only their SHA-256 hashes are stored.
//!
//! A session token names its seat slot and session so that a heartbeat reaches the right Redis
//! hash slot in one round trip with no lookup: `base64url("license/feature/sessionId") "." base64url(secret)`.
//! `/` cannot occur in an identifier, so the prefix splits unambiguously. The 256-bit secret is
//! what authenticates; the prefix only routes, and the stored hash covers the whole token.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::{Ident, Slot};

/// What a session token says about itself (not yet authenticated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    pub slot: Slot,
    pub session_id: String,
}

/// A fresh random session id (128 random bits, hex).
pub fn new_session_id() -> String {
    hex(&random_bytes::<16>())
}

/// Whether `s` has the form of a session id (32 lowercase or uppercase hex digits).
pub fn is_session_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A session token: its text, its hash (what the stores keep) and its 256-bit secret.
pub struct MintedToken {
    pub token: String,
    pub hash: String,
    pub secret: [u8; 32],
}

/// Mints a token for a session.
pub fn mint_session_token(slot: &Slot, session_id: &str) -> MintedToken {
    session_token(slot, session_id, random_bytes::<32>())
}

/// The token of a session with a given secret (a replayed create gives the same token back).
pub fn session_token(slot: &Slot, session_id: &str, secret: [u8; 32]) -> MintedToken {
    let prefix = format!("{}/{}/{}", slot.license, slot.feature, session_id);
    let token = format!("{}.{}", URL_SAFE_NO_PAD.encode(prefix), URL_SAFE_NO_PAD.encode(secret));
    let hash = hash_secret(&token);
    MintedToken { token, hash, secret }
}

/// Seals (or, applied again, unseals) a token secret for the idempotency record in Redis: XOR with
/// a pad derived from the license key, which Redis never holds, and the record's own identity. A
/// replay of the create presents the same license key and idempotency key and gets the same token;
/// the record alone is useless as a credential.
pub fn seal(secret: &[u8; 32], license_key: &str, slot: &Slot, idempotency_key: &str, session_id: &str) -> [u8; 32] {
    let pad = Sha256::new()
        .chain_update(b"seatkeeper idempotency record v1\0")
        .chain_update(license_key.as_bytes())
        .chain_update(b"\0")
        .chain_update(slot.license.as_str().as_bytes())
        .chain_update(b"/")
        .chain_update(slot.feature.as_str().as_bytes())
        .chain_update(b"\0")
        .chain_update(idempotency_key.as_bytes())
        .chain_update(b"\0")
        .chain_update(session_id.as_bytes())
        .finalize();
    let mut out = [0u8; 32];
    for (o, (a, b)) in out.iter_mut().zip(secret.iter().zip(pad.iter())) {
        *o = a ^ b;
    }
    out
}

/// Reads the routing part of a token. `None` for anything that is not a well-formed token.
pub fn parse_session_token(token: &str) -> Option<TokenClaims> {
    if token.len() > 1024 {
        return None;
    }
    let (prefix, secret) = token.split_once('.')?;
    if URL_SAFE_NO_PAD.decode(secret).ok()?.len() != 32 {
        return None;
    }
    let prefix = String::from_utf8(URL_SAFE_NO_PAD.decode(prefix).ok()?).ok()?;
    let mut parts = prefix.splitn(3, '/');
    let license = Ident::parse("sessionToken", parts.next()?).ok()?;
    let feature = Ident::parse("sessionToken", parts.next()?).ok()?;
    let session_id = parts.next()?;
    if !is_session_id(session_id) {
        return None;
    }
    Some(TokenClaims { slot: Slot { license, feature }, session_id: session_id.to_owned() })
}

/// A new license key: 256 random bits.
pub fn new_license_key() -> String {
    format!("sk_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

/// A new license-scoped admin token: its id (64 random bits, hex: what revocation names) and the
/// token itself, `sat_` and 256 random bits. Only the token's `hash_secret` is stored.
pub fn new_admin_token() -> (String, String) {
    (hex(&random_bytes::<8>()), format!("sat_{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>())))
}

/// Whether `s` has the form of an admin token id (16 hex digits).
pub fn is_admin_token_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// SHA-256 of a secret, hex. Keys and tokens are stored and compared only in this form.
pub fn hash_secret(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Compares two secrets in constant time (for the configured admin token).
pub fn secrets_equal(a: &str, b: &str) -> bool {
    // Hashing first makes the comparison independent of the lengths too.
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.as_slice().ct_eq(b.as_slice()).into()
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::fill(&mut bytes[..]);
    bytes
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot() -> Slot {
        Slot { license: Ident::parse("l", "lic-1").unwrap(), feature: Ident::parse("f", "web.rtc:x@y").unwrap() }
    }

    #[test]
    fn tokens_round_trip_and_are_unique() {
        let sid = new_session_id();
        let a = mint_session_token(&slot(), &sid);
        let b = mint_session_token(&slot(), &sid);
        assert_ne!(a.token, b.token);
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.hash, hash_secret(&a.token));
        let claims = parse_session_token(&a.token).unwrap();
        assert_eq!(claims.slot, slot());
        assert_eq!(claims.session_id, sid);
        assert_eq!(session_token(&slot(), &sid, a.secret).token, a.token);
    }

    #[test]
    fn sealed_secrets_open_only_with_the_same_inputs() {
        let sid = new_session_id();
        let t = mint_session_token(&slot(), &sid);
        let sealed = seal(&t.secret, "key", &slot(), "idem", &sid);
        assert_ne!(sealed, t.secret);
        assert_eq!(seal(&sealed, "key", &slot(), "idem", &sid), t.secret);
        assert_ne!(seal(&sealed, "other-key", &slot(), "idem", &sid), t.secret);
        assert_ne!(seal(&sealed, "key", &slot(), "idem2", &sid), t.secret);
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let t = mint_session_token(&slot(), &new_session_id()).token;
        let (prefix, _) = t.split_once('.').unwrap();
        for bad in [
            "",
            "abc",
            "abc.def",
            &format!("{prefix}.short"),
            &format!("{}.{}", URL_SAFE_NO_PAD.encode("a/b"), URL_SAFE_NO_PAD.encode([0u8; 32])),
            &format!("{}.{}", URL_SAFE_NO_PAD.encode("a b/c/0123"), URL_SAFE_NO_PAD.encode([0u8; 32])),
        ] {
            assert_eq!(parse_session_token(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn license_keys_carry_256_random_bits() {
        let k = new_license_key();
        assert_eq!(URL_SAFE_NO_PAD.decode(&k[3..]).unwrap().len(), 32);
        assert_ne!(k, new_license_key());
        assert_eq!(hash_secret("abc").len(), 64);
    }

    #[test]
    fn admin_tokens_carry_256_random_bits_and_an_id() {
        let (id, t) = new_admin_token();
        assert!(is_admin_token_id(&id), "{id}");
        assert_eq!(URL_SAFE_NO_PAD.decode(&t[4..]).unwrap().len(), 32);
        let (id2, t2) = new_admin_token();
        assert_ne!((id, t), (id2, t2));
        assert!(!is_admin_token_id("not-an-id"));
    }

    #[test]
    fn secret_comparison() {
        assert!(secrets_equal("s3cret", "s3cret"));
        assert!(!secrets_equal("s3cret", "s3cres"));
        assert!(!secrets_equal("s3cret", "s3cret-longer"));
    }
}
