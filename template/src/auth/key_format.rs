//! The API key format: generating keys, parsing what clients send, and hashing for storage.
//!
//! A key reads `{prefix}{id}_{secret}{checksum}`, for example
//! `sk_3hT9bK2mQx7L_Vb8…(43 chars)…0aZ9kP`:
//!
//! - `prefix` is the configured service prefix (`API_KEY_PREFIX`), so a leaked key says where it came from;
//! - `id` is 12 base62 characters, public: it names the key in logs, the UI and the routes;
//! - `secret` is 43 base62 characters from the OS CSPRNG (256 bits);
//! - `checksum` is the CRC32 of everything before it, as 6 base62 characters, so a mistyped or
//!   made-up key is rejected here, before any storage is touched.
//!
//! Only a digest of the whole key is stored: SHA-256, or HMAC-SHA256 when a server-side pepper is set.
//! Nothing in this module does I/O.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::config::Config;
use crate::model::{KeyHash, KeyId};

pub const ID_LEN: usize = KeyId::LEN;
pub const SECRET_LEN: usize = 43;
pub const CHECKSUM_LEN: usize = 6;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// How keys look and are hashed in this service.
#[derive(Clone)]
pub struct KeyFormat {
    prefix: String,
    /// HMAC keyed with the pepper once, cloned per key: the key schedule is not redone per request.
    /// Its state is wiped on drop (the `zeroize` feature of `hmac`).
    peppered: Option<Hmac<Sha256>>,
}

/// A freshly minted key. `key` is the only copy of the secret: show it once, then drop it.
pub struct MintedKey {
    pub id: String,
    pub key: Zeroizing<String>,
    pub hash: KeyHash,
}

impl std::fmt::Debug for MintedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedKey")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A key that passed the format and checksum checks. It borrows the request header.
#[derive(Clone, Copy)]
pub struct ParsedKey<'a> {
    id: KeyId,
    whole: &'a [u8],
}

impl std::fmt::Debug for ParsedKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParsedKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl ParsedKey<'_> {
    pub fn id(&self) -> KeyId {
        self.id
    }

    /// Whether the last characters are the checksum of the rest: a typo or a made-up key fails here.
    pub fn check_checksum(&self) -> Result<(), FormatError> {
        let (body, sum) = self.whole.split_at(self.whole.len() - CHECKSUM_LEN);
        // A plain comparison: the checksum follows from what the client sent, so how long the
        // comparison takes tells it nothing it did not know.
        if checksum(body) == sum { Ok(()) } else { Err(FormatError::BadChecksum) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("the key does not start with this service's prefix")]
    WrongPrefix,
    #[error("the key has the wrong length or shape")]
    WrongShape,
    #[error("the key's checksum does not match")]
    BadChecksum,
}

impl KeyFormat {
    /// The format `API_KEY_PREFIX` and `API_KEY_PEPPER` describe.
    pub fn from_config(config: &Config) -> Self {
        Self::new(
            config.api_key_prefix.clone(),
            config.api_key_pepper.as_ref().map(|pepper| pepper.expose()),
        )
    }

    pub fn new(prefix: impl Into<String>, pepper: Option<&[u8]>) -> Self {
        Self {
            prefix: prefix.into(),
            peppered: pepper
                .map(|p| Hmac::<Sha256>::new_from_slice(p).expect("HMAC takes any key length")),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Total length of a key in this format.
    pub fn key_len(&self) -> usize {
        self.prefix.len() + ID_LEN + 1 + SECRET_LEN + CHECKSUM_LEN
    }

    /// Mints a new key from the operating system's CSPRNG.
    pub fn generate(&self) -> MintedKey {
        let random = random_base62(ID_LEN + SECRET_LEN);
        let mut key = Zeroizing::new(String::with_capacity(self.key_len()));
        key.push_str(&self.prefix);
        key.push_str(&random[..ID_LEN]);
        key.push('_');
        key.push_str(&random[ID_LEN..]);
        let checksum = checksum(key.as_bytes());
        key.push_str(std::str::from_utf8(&checksum).expect("base62 is ASCII"));
        let parsed = self.parse(&key).expect("a generated key parses");
        MintedKey { id: parsed.id().as_str().to_owned(), hash: self.hash(parsed), key }
    }

    /// Checks prefix, shape and checksum without touching storage. Takes bytes as well as text, so a
    /// header value is checked once, here, rather than first as text and then again as a key.
    pub fn parse<'a, K: AsRef<[u8]> + ?Sized>(
        &self,
        raw: &'a K,
    ) -> Result<ParsedKey<'a>, FormatError> {
        let key = self.parse_shape(raw)?;
        key.check_checksum()?;
        Ok(key)
    }

    /// Checks prefix and shape only. [`ParsedKey::check_checksum`] completes [`KeyFormat::parse`].
    pub fn parse_shape<'a, K: AsRef<[u8]> + ?Sized>(
        &self,
        raw: &'a K,
    ) -> Result<ParsedKey<'a>, FormatError> {
        let whole = raw.as_ref();
        let rest = whole.strip_prefix(self.prefix.as_bytes()).ok_or(FormatError::WrongPrefix)?;
        let Some((id, [b'_', secret @ ..])) = rest.split_first_chunk::<ID_LEN>() else {
            return Err(FormatError::WrongShape);
        };
        if secret.len() != SECRET_LEN + CHECKSUM_LEN {
            return Err(FormatError::WrongShape);
        }
        // Every byte is looked at (no early exit), which lets the compiler check many at once.
        let is_base62 =
            |part: &[u8]| part.iter().fold(true, |ok, b| ok & b.is_ascii_alphanumeric());
        if !is_base62(id) || !is_base62(secret) {
            return Err(FormatError::WrongShape);
        }
        // Base62 is ASCII and the id has its length, so this cannot fail.
        let id =
            std::str::from_utf8(id).ok().and_then(KeyId::new).ok_or(FormatError::WrongShape)?;
        Ok(ParsedKey { id, whole })
    }

    /// Whether `text` holds a whole key of this format (checksum included) anywhere in it.
    pub fn appears_in(&self, text: &str) -> bool {
        let len = self.key_len();
        text.match_indices(self.prefix.as_str())
            .filter_map(|(at, _)| text.as_bytes().get(at..at + len))
            .any(|candidate| self.parse(candidate).is_ok())
    }

    /// The digest stored for a key: SHA-256, or HMAC-SHA256 under the pepper.
    pub fn hash(&self, key: ParsedKey<'_>) -> KeyHash {
        KeyHash(match &self.peppered {
            Some(mac) => {
                let mut mac = mac.clone();
                mac.update(key.whole);
                mac.finalize().into_bytes().into()
            }
            None => Sha256::digest(key.whole).into(),
        })
    }

    /// Compares a presented key's digest with a stored one: every byte is looked at, and the one
    /// branch is on their folded difference. Timing could only ever tell how much of two digests
    /// agree, which reveals nothing of the secret; subtle's per-byte barriers cost more than the
    /// rest of the comparison.
    pub fn verify(&self, key: ParsedKey<'_>, stored: &KeyHash) -> bool {
        let presented = self.hash(key).0;
        let diff = presented.iter().zip(&stored.0).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff.ct_eq(&0).into()
    }
}

fn random_base62(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = Zeroizing::new([0u8; 64]);
    while out.len() < len {
        getrandom::fill(buf.as_mut()).expect("the OS random number generator is available");
        // 248 = 4 × 62: dropping larger bytes keeps every character equally likely.
        for &b in buf.iter().filter(|&&b| b < 248) {
            if out.len() == len {
                break;
            }
            out.push(BASE62[usize::from(b % 62)] as char);
        }
    }
    out
}

/// The CRC32 of `body` as base62 ASCII.
fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut n = crc32fast::hash(body);
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format() -> KeyFormat {
        KeyFormat::new("sk_", None)
    }

    #[test]
    fn generated_keys_parse_and_verify() {
        let f = format();
        let new = f.generate();
        assert_eq!(new.key.len(), f.key_len());
        let parsed = f.parse(&new.key).unwrap();
        assert_eq!(parsed.id().as_str(), new.id);
        assert!(f.verify(parsed, &new.hash));
    }

    #[test]
    fn keys_are_unique() {
        let f = format();
        let a = f.generate();
        let b = f.generate();
        assert_ne!(a.id, b.id);
        assert_ne!(*a.key, *b.key);
    }

    #[test]
    fn keys_are_found_inside_text() {
        let f = format();
        let key = f.generate().key;
        assert!(f.appears_in(&format!("pasted: {}!", key.as_str())));
        assert!(!f.appears_in(&key[1..]));
        assert!(!f.appears_in(&key.replace('_', "-")));
        assert!(!f.appears_in("sk_ and nothing else"));
    }

    #[test]
    fn junk_is_rejected_before_storage() {
        let f = format();
        let key = f.generate().key;
        assert_eq!(f.parse("").unwrap_err(), FormatError::WrongPrefix);
        assert_eq!(f.parse(&key.replacen("sk_", "pk_", 1)).unwrap_err(), FormatError::WrongPrefix);
        assert_eq!(f.parse(&key[..key.len() - 1]).unwrap_err(), FormatError::WrongShape);
        let last = if key.ends_with('0') { '1' } else { '0' };
        assert_eq!(
            f.parse(&format!("{}{last}", &key[..key.len() - 1])).unwrap_err(),
            FormatError::BadChecksum
        );
        assert_eq!(
            f.parse(&format!("{}!", &key[..key.len() - 1])).unwrap_err(),
            FormatError::WrongShape
        );
        let mut typo = key.to_string();
        let i = f.prefix().len() + ID_LEN + 5;
        let swapped = if &typo[i..=i] == "a" { "b" } else { "a" };
        typo.replace_range(i..=i, swapped);
        assert_eq!(f.parse(&typo).unwrap_err(), FormatError::BadChecksum);
        let non_ascii = format!("{}é{}", &key[..10], &key[12..]);
        assert!(f.parse(&non_ascii).is_err());
        let id_at = f.prefix().len();
        for shape in [
            format!("{}-{}", &key[..id_at + ID_LEN], &key[id_at + ID_LEN + 1..]),
            format!("{}0", key.as_str()),
            format!("{}-{}", &key[..id_at + 3], &key[id_at + 4..]),
        ] {
            assert_eq!(f.parse(&shape).unwrap_err(), FormatError::WrongShape, "{shape}");
        }
    }

    #[test]
    fn digests_read_back_from_hex_and_nothing_else() {
        let mut record = crate::store::conformance::sample("owner", chrono::Utc::now());
        record.key_hash = format().generate().hash;
        let stored = serde_json::to_value(record.stored()).unwrap();
        assert_eq!(stored["key_hash"], hex::encode(record.key_hash.0));
        let read: crate::model::ApiKeyRecord = serde_json::from_value(stored).unwrap();
        assert_eq!(read.key_hash, record.key_hash);
        for bad in ["", "abc", &"g".repeat(64), &"0".repeat(62)] {
            assert!(serde_json::from_value::<KeyHash>(bad.into()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_pepper_changes_the_digest() {
        let plain = format();
        let peppered = KeyFormat::new("sk_", Some(b"server secret"));
        let new = plain.generate();
        let parsed = plain.parse(&new.key).unwrap();
        assert_ne!(plain.hash(parsed), peppered.hash(parsed));
        assert!(!peppered.verify(parsed, &new.hash));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let new = format().generate();
        assert!(!format!("{new:?}").contains(new.key.as_str()));
    }

    /// The shape the README gives secret scanners: `sk_[0-9A-Za-z]{12}_[0-9A-Za-z]{49}`.
    #[test]
    fn keys_have_the_shape_scanners_look_for() {
        let key = format().generate().key;
        let (id, rest) = key.strip_prefix("sk_").unwrap().split_at(12);
        let secret = rest.strip_prefix('_').unwrap();
        assert_eq!(secret.len(), 49);
        assert!(id.chars().chain(secret.chars()).all(|c| c.is_ascii_alphanumeric()));
    }
}
