//! Multi-document YAML streams as an order-preserving value tree.
//!
//! `lanyard inject` must hand every document back with its fields in the user's order and
//! with fields it does not know untouched, so documents are read into [`Yaml`], whose maps
//! keep insertion order (`serde_json::Value` sorts keys unless a workspace-wide feature is
//! switched on, which would change other crates' output).
//!
//! Parsing follows what `kubectl` reads: YAML 1.1 octal (`0644` is 420, as in a volume's
//! `defaultMode`) and YAML 1.1 booleans; duplicate keys are an error. Comments, anchors and
//! quoting styles are not kept: the output is the same data, re-emitted.
//!
//! A stream is split into documents at `---` / `...` lines (YAML forbids those at the start
//! of a line inside any scalar, so the split is exact) and each is parsed on its own, which
//! is what lets an error name the document it is in.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// Longest stream read (far above any set of manifests).
pub const MAX_STREAM_BYTES: usize = 16 * 1024 * 1024;
/// Most documents in one stream.
pub const MAX_DOCUMENTS: usize = 10_000;

/// One YAML value; maps keep their keys in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Yaml {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    /// An empty map.
    pub fn map() -> Self {
        Yaml::Map(Vec::new())
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Yaml::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_seq_mut(&mut self) -> Option<&mut Vec<Yaml>> {
        match self {
            Yaml::Seq(items) => Some(items),
            _ => None,
        }
    }

    /// The value under `key`, when `self` is a map holding it.
    pub fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows `path` through nested maps.
    pub fn at(&self, path: &[&str]) -> Option<&Yaml> {
        path.iter().try_fold(self, |node, key| node.get(key))
    }

    pub fn at_mut(&mut self, path: &[&str]) -> Option<&mut Yaml> {
        path.iter().try_fold(self, |node, key| node.get_mut(key))
    }

    /// The value under `key`, inserted (at the end) as `default` when missing or null. `None`
    /// when `self` is not a map.
    pub fn entry(&mut self, key: &str, default: impl FnOnce() -> Yaml) -> Option<&mut Yaml> {
        let Yaml::Map(entries) = self else {
            return None;
        };
        let index = match entries.iter().position(|(k, _)| k == key) {
            Some(i) => {
                if entries[i].1 == Yaml::Null {
                    entries[i].1 = default();
                }
                i
            }
            None => {
                entries.push((key.to_owned(), default()));
                entries.len() - 1
            }
        };
        Some(&mut entries[index].1)
    }

    /// Sets `key` to `value`, in place when present, else at the end. No-op on a non-map.
    pub fn set(&mut self, key: &str, value: Yaml) {
        if let Some(slot) = self.entry(key, || Yaml::Null) {
            *slot = value;
        }
    }

    /// Converts JSON (e.g. built with `serde_json::json!`) into YAML; keys come out sorted.
    pub fn from_json(value: &serde_json::Value) -> Yaml {
        use serde_json::Value;
        match value {
            Value::Null => Yaml::Null,
            Value::Bool(b) => Yaml::Bool(*b),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    Yaml::Int(i)
                } else if let Some(u) = n.as_u64() {
                    Yaml::UInt(u)
                } else {
                    Yaml::Float(n.as_f64().unwrap_or_default())
                }
            }
            Value::String(s) => Yaml::String(s.clone()),
            Value::Array(items) => Yaml::Seq(items.iter().map(Yaml::from_json).collect()),
            Value::Object(map) => Yaml::Map(
                map.iter()
                    .map(|(k, v)| (k.clone(), Yaml::from_json(v)))
                    .collect(),
            ),
        }
    }
}

impl From<&str> for Yaml {
    fn from(s: &str) -> Self {
        Yaml::String(s.to_owned())
    }
}

impl Serialize for Yaml {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Yaml::Null => serializer.serialize_unit(),
            Yaml::Bool(b) => serializer.serialize_bool(*b),
            Yaml::Int(i) => serializer.serialize_i64(*i),
            Yaml::UInt(u) => serializer.serialize_u64(*u),
            Yaml::Float(f) => serializer.serialize_f64(*f),
            Yaml::String(s) => serializer.serialize_str(s),
            Yaml::Seq(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            Yaml::Map(entries) => {
                let mut map = serializer.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Yaml {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(YamlVisitor)
    }
}

struct YamlVisitor;

impl<'de> Visitor<'de> for YamlVisitor {
    type Value = Yaml;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_none<E>(self) -> Result<Yaml, E> {
        Ok(Yaml::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Yaml, D::Error> {
        Yaml::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Yaml, E> {
        Ok(Yaml::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Yaml, E> {
        Ok(Yaml::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Yaml, E> {
        Ok(i64::try_from(v).map_or(Yaml::UInt(v), Yaml::Int))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Yaml, E> {
        Ok(Yaml::Float(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Yaml, E> {
        Ok(Yaml::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Yaml, E> {
        Ok(Yaml::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Yaml, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Yaml::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Yaml, A::Error> {
        let mut entries: Vec<(String, Yaml)> = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(de::Error::custom(format!("duplicate key `{key}`")));
            }
            let value = map.next_value()?;
            entries.push((key, value));
        }
        Ok(Yaml::Map(entries))
    }
}

/// Why a stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the input is larger than {MAX_STREAM_BYTES} bytes")]
    TooLarge,
    #[error("the input has more than {MAX_DOCUMENTS} documents")]
    TooManyDocuments,
    #[error("document {number} (starting at line {line}) is not valid YAML: {message}")]
    Document {
        /// 1-based, counting every `---`-separated document, empty ones included.
        number: usize,
        /// 1-based line of the input where the document starts.
        line: usize,
        message: String,
    },
}

/// One document of a stream.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// 1-based position in the stream, empty documents included.
    pub number: usize,
    /// 1-based line of the stream where it starts.
    pub line: usize,
    /// Its text as given (comments included), without the `---` marker.
    pub text: String,
    /// `None` for an empty (or comment-only) document.
    pub value: Option<Yaml>,
}

/// Reads every document of `text`; fails on the first one that does not parse.
pub fn read_stream(text: &str) -> Result<Vec<Document>, ReadError> {
    if text.len() > MAX_STREAM_BYTES {
        return Err(ReadError::TooLarge);
    }
    let pieces = split_documents(text);
    if pieces.len() > MAX_DOCUMENTS {
        return Err(ReadError::TooManyDocuments);
    }
    pieces
        .into_iter()
        .enumerate()
        .map(|(i, (line, text))| {
            let number = i + 1;
            let value: Yaml =
                serde_saphyr::from_str_with_options(&text, parse_options()).map_err(|e| {
                    ReadError::Document {
                        number,
                        line,
                        message: first_line(&e.to_string()),
                    }
                })?;
            Ok(Document {
                number,
                line,
                text,
                value: (value != Yaml::Null).then_some(value),
            })
        })
        .collect()
}

/// Writes documents as one stream (`---` between them); `None`s are left out.
pub fn write_stream<'a>(documents: impl IntoIterator<Item = &'a Yaml>) -> String {
    let mut out = String::new();
    for doc in documents {
        if !out.is_empty() {
            out.push_str("---\n");
        }
        // Serialising our own value tree cannot fail: every key is a string.
        let text = serde_saphyr::to_string(doc).expect("a Yaml tree always serialises");
        out.push_str(&text);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}

fn parse_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        legacy_octal_numbers: true,
    }
}

/// Messages can carry a source snippet over several lines; the first says what is wrong.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().trim().to_owned()
}

/// Splits a stream at document markers: `(first line number, text)` per document. A
/// leading piece holding only blanks, comments or directives is not a document.
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut pieces: Vec<(usize, String)> = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    let mut seen_marker = false;
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if let Some(rest) = marker_rest(line, "---") {
            if seen_marker || !is_blank_piece(&current) {
                pieces.push((start, std::mem::take(&mut current)));
            }
            current.clear();
            seen_marker = true;
            start = number;
            if !rest.is_empty() {
                current.push_str(rest);
                current.push('\n');
            }
        } else if marker_rest(line, "...").is_some() {
            // Document end: what follows, up to the next `---`, is another document.
            pieces.push((start, std::mem::take(&mut current)));
            seen_marker = false;
            start = number + 1;
        } else {
            current.push_str(line);
            current.push('\n');
        }
    }
    if seen_marker || !is_blank_piece(&current) {
        pieces.push((start, current));
    }
    pieces
}

/// When `line` is the marker (alone, or followed by a space and content), what follows it.
fn marker_rest<'a>(line: &'a str, marker: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(marker)?;
    if rest.is_empty() {
        Some("")
    } else if rest.starts_with([' ', '\t']) {
        Some(rest.trim_start())
    } else {
        None
    }
}

fn is_blank_piece(text: &str) -> bool {
    text.lines().all(|l| {
        let t = l.trim();
        t.is_empty() || t.starts_with('#') || t.starts_with('%')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_key_order_and_kubectl_scalars() {
        let docs = read_stream("b: 1\na: 0644\nc: yes\nd: \"0644\"\ne: [x]\n").unwrap();
        let Some(Yaml::Map(entries)) = &docs[0].value else {
            panic!("not a map")
        };
        let keys: Vec<_> = entries.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", "a", "c", "d", "e"]);
        assert_eq!(entries[1].1, Yaml::Int(0o644));
        assert_eq!(entries[2].1, Yaml::Bool(true));
        assert_eq!(entries[3].1, Yaml::String("0644".into()));
        let out = write_stream(docs.iter().filter_map(|d| d.value.as_ref()));
        assert_eq!(out, "b: 1\na: 420\nc: true\nd: \"0644\"\ne:\n- x\n");
    }

    #[test]
    fn numbers_documents_including_empty_ones() {
        let text = "# header\n---\na: 1\n---\n---\nb: 2\n...\nc: 3\n";
        let docs = read_stream(text).unwrap();
        let numbered: Vec<_> = docs.iter().map(|d| (d.number, d.value.is_some())).collect();
        assert_eq!(numbered, [(1, true), (2, false), (3, true), (4, true)]);
        assert_eq!(read_stream("").unwrap(), []);
        assert_eq!(read_stream("# only a comment\n").unwrap(), []);
    }

    #[test]
    fn an_error_names_its_document() {
        let text = "a: 1\n---\nb: 2\n---\nc: [unclosed\n";
        match read_stream(text).unwrap_err() {
            ReadError::Document { number, line, .. } => assert_eq!((number, line), (3, 4)),
            other => panic!("{other}"),
        }
        let dup = read_stream("a: 1\na: 2\n").unwrap_err();
        assert!(dup.to_string().contains("document 1"), "{dup}");
    }

    #[test]
    fn marker_with_content_on_its_line() {
        let docs = read_stream("--- {a: 1}\n--- !!str x\n").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].value, Some(Yaml::String("x".into())));
    }

    #[test]
    fn bounded() {
        let many = "---\n".repeat(MAX_DOCUMENTS + 1);
        assert!(matches!(
            read_stream(&many),
            Err(ReadError::TooManyDocuments)
        ));
    }
}
