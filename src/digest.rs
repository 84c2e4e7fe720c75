//! SHA-256 digests in lower-case hex: body digests, token digests, audit
//! hashes. A leaf: it imports nothing else of Latch's.

use sha2::{Digest, Sha256};

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Hex SHA-256 of a body; the empty body (every GET) is a constant.
pub fn body_sha256(body: &[u8]) -> String {
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    if body.is_empty() {
        EMPTY.to_string()
    } else {
        hex(&sha256(body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_body_digest_is_the_sha256_of_nothing() {
        assert_eq!(body_sha256(b""), hex(&sha256(b"")));
        assert_eq!(body_sha256(b"x"), hex(&sha256(b"x")));
        assert_eq!(
            hex(&sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
