//! What the policy sees of a request body, and the exact bytes the tool gets.
//!
//! The rule: the policy judges the content the tool will act on, or the call
//! is refused. So a body is decoded here exactly once, strictly, and the
//! decoded bytes — not the agent's original encoding — are what Latch
//! forwards (or stores for approval):
//!
//! - `Content-Encoding` gzip, deflate and br are decoded under a size limit
//!   (the forwarded body is the decoded one, without the header); anything
//!   else, or stacked encodings, is refused with 415.
//! - JSON (`application/json`, `application/*+json`, or no content type) must
//!   be UTF-8 (a leading BOM is dropped), one value, no trailing data, no
//!   `NaN`/`Infinity`/out-of-range numbers, and **no duplicate keys**: parsers
//!   disagree on which duplicate wins, so a policy could judge one value while
//!   the tool acts on another.
//! - Form bodies (`application/x-www-form-urlencoded`) become an object of
//!   strings; repeated fields and bracketed keys (`a[b]=`) are refused for
//!   the same reason — frameworks disagree on what they mean.
//! - Every other media type (multipart, text, XML, octet-stream …) is refused
//!   with 415 unless the route declares `body = "opaque"`, in which case the
//!   policy is told so (`input.request.body_format == "opaque"`) and sees no
//!   body.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;

use bytes::Bytes;
use http::HeaderMap;
use regorus::Value;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};

/// How the body was understood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// No body (or an empty one).
    None,
    /// A JSON value.
    Json,
    /// An urlencoded form, as an object of strings.
    Form,
    /// The route forwards bodies unjudged (`body = "opaque"` or streaming).
    Opaque,
}

impl Format {
    /// `input.request.body_format`.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::None => "none",
            Format::Json => "json",
            Format::Form => "form",
            Format::Opaque => "opaque",
        }
    }
}

/// A judged body: what the policy sees and the bytes that will be sent.
#[derive(Debug, Clone)]
pub struct Judged {
    /// The bytes forwarded upstream (decoded, BOM removed).
    pub bytes: Bytes,
    /// `input.request.body`: the parsed value, or `Null`.
    pub value: Value,
    /// How the body was understood.
    pub format: Format,
    /// A `Content-Encoding` was removed: the forwarded bytes are decoded.
    pub decoded: bool,
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// An encoding Latch cannot decode (or several stacked).
    #[error("Content-Encoding {0:?} is not supported; send identity, gzip, deflate or br")]
    UnsupportedEncoding(String),
    /// The body does not decode with its declared encoding.
    #[error("the body is not valid {0} data")]
    BadEncoding(&'static str),
    /// The decoded body is larger than the route allows.
    #[error("the decoded body exceeds {0} bytes")]
    TooLarge(u64),
    /// A media type the policy cannot see into.
    #[error("{0}")]
    UnsupportedType(String),
    /// Not strict JSON.
    #[error("the body is not valid JSON: {0}")]
    BadJson(String),
    /// Not a well-formed urlencoded form.
    #[error("the form body is invalid: {0}")]
    BadForm(String),
    /// A parameter given in both the query and the body.
    #[error("{0:?} is given in both the query string and the body; send it once")]
    Ambiguous(String),
}

impl BodyError {
    /// Whether the answer is 415 (media type or encoding) rather than 400.
    pub fn is_unsupported_media(&self) -> bool {
        matches!(
            self,
            BodyError::UnsupportedEncoding(_) | BodyError::UnsupportedType(_)
        )
    }
}

/// Judge a buffered body. `limit` bounds the decoded size; `opaque` is the
/// route's `body = "opaque"`.
pub fn judge(
    headers: &HeaderMap,
    raw: Bytes,
    limit: u64,
    opaque: bool,
) -> Result<Judged, BodyError> {
    if opaque {
        return Ok(Judged {
            bytes: raw,
            value: Value::Null,
            format: Format::Opaque,
            decoded: false,
        });
    }
    let (bytes, decoded) = decode(headers, raw, limit)?;
    if bytes.is_empty() {
        return Ok(Judged {
            bytes,
            value: Value::Null,
            format: Format::None,
            decoded,
        });
    }
    let (media, charset) = media_type(headers);
    if let Some(cs) = &charset {
        if !cs.eq_ignore_ascii_case("utf-8") && !cs.eq_ignore_ascii_case("utf8") {
            return Err(BodyError::UnsupportedType(format!(
                "charset {cs:?} is not supported; send UTF-8"
            )));
        }
    }
    let is_json = |m: &str| {
        m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
    };
    match media.as_deref() {
        None => json_body(bytes, decoded).map_err(|e| match e {
            BodyError::BadJson(_) => BodyError::UnsupportedType(
                "the body has no Content-Type and is not JSON; declare its media type".into(),
            ),
            other => other,
        }),
        Some(m) if is_json(m) => json_body(bytes, decoded),
        Some("application/x-www-form-urlencoded") => {
            let value = parse_form(&bytes)?;
            Ok(Judged {
                bytes,
                value,
                format: Format::Form,
                decoded,
            })
        }
        Some(m) => Err(BodyError::UnsupportedType(format!(
            "media type {m:?} cannot be judged by the policy; send JSON or a urlencoded form, \
             or declare the route body = \"opaque\""
        ))),
    }
}

fn json_body(bytes: Bytes, decoded: bool) -> Result<Judged, BodyError> {
    let bytes = match bytes.strip_prefix(b"\xEF\xBB\xBF") {
        Some(_) => bytes.slice(3..),
        None => bytes,
    };
    let value = parse_json(&bytes)?;
    Ok(Judged {
        bytes,
        value,
        format: Format::Json,
        decoded,
    })
}

/// `(media type, charset)`, lower-cased, from `Content-Type`.
fn media_type(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let mut values = headers.get_all(http::header::CONTENT_TYPE).iter();
    let Some(v) = values.next() else {
        return (None, None);
    };
    // Two Content-Type headers: which one does the tool believe? Neither.
    if values.next().is_some() {
        return (Some("multiple content types".into()), None);
    }
    let Ok(text) = v.to_str() else {
        return (Some("non-text content type".into()), None);
    };
    let mut parts = text.split(';');
    let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let charset = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string());
    (Some(media), charset)
}

/// Undo `Content-Encoding`, bounded by `limit` decoded bytes.
fn decode(headers: &HeaderMap, raw: Bytes, limit: u64) -> Result<(Bytes, bool), BodyError> {
    let mut codings = Vec::new();
    for v in headers.get_all(http::header::CONTENT_ENCODING) {
        let text = v
            .to_str()
            .map_err(|_| BodyError::UnsupportedEncoding("non-text".into()))?;
        for c in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            let c = c.to_ascii_lowercase();
            if c != "identity" {
                codings.push(c);
            }
        }
    }
    let coding = match codings.as_slice() {
        [] => return Ok((raw, false)),
        [one] => one.as_str(),
        many => return Err(BodyError::UnsupportedEncoding(many.join(", "))),
    };
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    let out = match coding {
        "gzip" | "x-gzip" => {
            read_bounded(flate2::read::MultiGzDecoder::new(&raw[..]), cap, "gzip")?
        }
        "deflate" => read_bounded(flate2::read::ZlibDecoder::new(&raw[..]), cap, "deflate")?,
        "br" => read_bounded(
            brotli_decompressor::Decompressor::new(&raw[..], 4096),
            cap,
            "br",
        )?,
        other => return Err(BodyError::UnsupportedEncoding(other.to_string())),
    };
    Ok((Bytes::from(out), true))
}

fn read_bounded(r: impl Read, cap: usize, name: &'static str) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    // One byte past the cap tells "exactly at the limit" from "over it".
    let mut limited = r.take(cap as u64 + 1);
    limited
        .read_to_end(&mut out)
        .map_err(|_| BodyError::BadEncoding(name))?;
    if out.len() > cap {
        return Err(BodyError::TooLarge(cap as u64));
    }
    Ok(out)
}

/// Parse strict JSON into a regorus value: UTF-8 only, one value, finite
/// numbers, no duplicate object keys.
pub fn parse_json(bytes: &[u8]) -> Result<Value, BodyError> {
    if bytes.starts_with(&[0xFE, 0xFF]) || bytes.starts_with(&[0xFF, 0xFE]) || bytes.contains(&0) {
        return Err(BodyError::UnsupportedType(
            "JSON must be UTF-8 (this looks like UTF-16 or UTF-32)".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = Strict
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| BodyError::BadJson(e.to_string()))?;
    Ok(value)
}

/// Builds a regorus value and refuses duplicate keys and non-finite numbers.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        if !v.is_finite() {
            return Err(E::custom("numbers must be finite"));
        }
        Ok(Value::from(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(Strict)? {
            items.push(v);
        }
        Ok(Value::from(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            let key = Value::from(key);
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "duplicate key {} (parsers disagree on which one wins)",
                    serde_json::to_string(&key).unwrap_or_default()
                )));
            }
            let v = map.next_value_seed(Strict)?;
            out.insert(key, v);
        }
        Ok(Value::from(out))
    }
}

/// An urlencoded form as an object of strings, strictly: valid UTF-8 and
/// percent escapes, no repeated fields, no bracketed keys.
pub fn parse_form(bytes: &[u8]) -> Result<Value, BodyError> {
    let text = std::str::from_utf8(bytes).map_err(|_| BodyError::BadForm("not UTF-8".into()))?;
    let mut out = BTreeMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(k)?;
        if key.contains(['[', ']']) {
            return Err(BodyError::BadForm(format!(
                "field {key:?}: bracketed keys mean different things to different frameworks; send JSON"
            )));
        }
        let value = percent_decode(v)?;
        if out
            .insert(Value::from(key.as_str()), Value::from(value))
            .is_some()
        {
            return Err(BodyError::BadForm(format!(
                "field {key:?} is repeated; frameworks disagree on which value wins"
            )));
        }
    }
    Ok(Value::from(out))
}

fn percent_decode(s: &str) -> Result<String, BodyError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| BodyError::BadForm(format!("bad percent escape in {s:?}")))?;
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| BodyError::BadForm("escapes decode to invalid UTF-8".into()))
}

/// Refuse a parameter that appears in both the query and an object body:
/// frameworks merge the two differently, so the policy could judge one value
/// while the tool acts on the other.
pub fn check_overlap(
    body: &Value,
    query: &crate::http_util::query::Query,
) -> Result<(), BodyError> {
    if query.is_empty() {
        return Ok(());
    }
    // Matched, not `as_object()`: that builds an error (and, with
    // RUST_BACKTRACE set, a backtrace) for every call without an object body.
    if let Value::Object(obj) = body {
        if let Some(k) = query
            .keys()
            .find(|k| obj.contains_key(&Value::from(k.as_str())))
        {
            return Err(BodyError::Ambiguous(k.clone()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn js(v: &Value) -> serde_json::Value {
        serde_json::to_value(v).unwrap()
    }

    fn json_h() -> HeaderMap {
        headers(&[("content-type", "application/json")])
    }

    #[test]
    fn strict_json_refuses_what_parsers_disagree_on() {
        for bad in [
            &br#"{"a": 1, "a": 2}"#[..],
            br#"{"x": {"k": 1, "k": 1}}"#,
            b"NaN",
            b"{\"a\": Infinity}",
            b"{\"a\": 1e400}",
            b"{\"a\": 1} trailing",
            b"{\"a\": 1}{\"a\": 2}",
            b"\xff\xfe{\x00}\x00",
            b"{\"a\": \"\xff\"}",
        ] {
            assert!(
                judge(&json_h(), Bytes::from_static(bad), 1 << 20, false).is_err(),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn a_bom_is_dropped_from_what_is_judged_and_sent() {
        let j = judge(
            &json_h(),
            Bytes::from_static(b"\xEF\xBB\xBF{\"amount\": 5}"),
            1 << 20,
            false,
        )
        .unwrap();
        assert_eq!(&j.bytes[..], b"{\"amount\": 5}");
        assert_eq!(js(&j.value), serde_json::json!({"amount": 5}));
        assert_eq!(j.format, Format::Json);
    }

    #[test]
    fn gzip_is_decoded_and_bounded() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(br#"{"amount": 9000}"#).unwrap();
        let gz = Bytes::from(enc.finish().unwrap());
        let h = headers(&[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ]);
        let j = judge(&h, gz.clone(), 1 << 20, false).unwrap();
        assert!(j.decoded);
        assert_eq!(&j.bytes[..], br#"{"amount": 9000}"#);
        assert_eq!(judge(&h, gz, 8, false).unwrap_err(), BodyError::TooLarge(8));

        let h = headers(&[("content-encoding", "gzip, br")]);
        assert!(judge(&h, Bytes::from_static(b"x"), 100, false)
            .unwrap_err()
            .is_unsupported_media());
        let h = headers(&[("content-encoding", "gzip")]);
        assert_eq!(
            judge(&h, Bytes::from_static(b"not gzip"), 100, false).unwrap_err(),
            BodyError::BadEncoding("gzip")
        );
    }

    #[test]
    fn forms_become_args_strictly() {
        let h = headers(&[("content-type", "application/x-www-form-urlencoded")]);
        let j = judge(
            &h,
            Bytes::from_static(b"to=a%40x.com&note=hi+there"),
            1024,
            false,
        )
        .unwrap();
        assert_eq!(
            js(&j.value),
            serde_json::json!({"to": "a@x.com", "note": "hi there"})
        );
        for bad in [&b"a=1&a=2"[..], b"a[b]=1", b"a=%zz", b"a=%ff"] {
            assert!(
                judge(&h, Bytes::from_static(bad), 1024, false).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn other_media_types_are_refused_unless_opaque() {
        for ct in [
            "text/plain",
            "multipart/form-data; boundary=x",
            "application/xml",
        ] {
            let h = headers(&[("content-type", ct)]);
            let err = judge(&h, Bytes::from_static(b"{\"a\":1}"), 1024, false).unwrap_err();
            assert!(err.is_unsupported_media(), "{ct}");
            let j = judge(&h, Bytes::from_static(b"{\"a\":1}"), 1024, true).unwrap();
            assert_eq!(j.format, Format::Opaque);
            assert_eq!(j.value, Value::Null);
        }
        let h = headers(&[("content-type", "application/json; charset=utf-16")]);
        assert!(judge(&h, Bytes::from_static(b"{}"), 1024, false).is_err());
        // No content type: JSON is understood, anything else refused.
        let j = judge(&HeaderMap::new(), Bytes::from_static(b"[1]"), 1024, false).unwrap();
        assert_eq!(j.format, Format::Json);
        assert!(
            judge(&HeaderMap::new(), Bytes::from_static(b"a=1"), 1024, false)
                .unwrap_err()
                .is_unsupported_media()
        );
        let j = judge(&json_h(), Bytes::new(), 1024, false).unwrap();
        assert_eq!(j.format, Format::None);
    }

    #[test]
    fn query_and_body_may_not_both_name_a_parameter() {
        let body = parse_json(br#"{"amount": 5}"#).unwrap();
        let q = crate::http_util::query::parse_query(Some("amount=5000"));
        assert_eq!(
            check_overlap(&body, &q),
            Err(BodyError::Ambiguous("amount".into()))
        );
        let q = crate::http_util::query::parse_query(Some("dry_run=1"));
        assert!(check_overlap(&body, &q).is_ok());
    }
}
