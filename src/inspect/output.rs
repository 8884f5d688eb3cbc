//! Output formatting shared by the tools: names (bytes) shown as text, a small JSON writer,
//! layer labels. Names are bytes all the way down: what is not UTF-8 (and control
//! characters) is shown escaped as `\xNN`, `\n`, `\t`, so that one entry is one line.

use crate::overlay::LayerInfo;
use std::fmt::Write as _;

/// A name or path as text: UTF-8 as it is, other bytes and control characters escaped.
pub fn show(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

/// A path in the merged view (`/` joined components) as text.
pub fn show_path(components: &[Vec<u8>]) -> String {
    if components.is_empty() {
        return "/".into();
    }
    let mut s = String::new();
    for c in components {
        s.push('/');
        s.push_str(&show(c));
    }
    s
}

/// How the tools name a layer: `upper`, or `lowerN` with N its position in `lowerdir=`
/// (0 is the leftmost, the top lower).
pub fn layer_label(layers: &[LayerInfo], i: usize) -> String {
    let has_upper = layers.first().is_some_and(|l| l.upper);
    match (has_upper, i) {
        (true, 0) => "upper".into(),
        (true, i) => format!("lower{}", i - 1),
        (false, i) => format!("lower{i}"),
    }
}

/// The type of a mode, in words.
pub fn type_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => "directory",
        libc::S_IFREG => "regular file",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR => "character device",
        libc::S_IFBLK => "block device",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        _ => "unknown",
    }
}

/// A JSON value, written by hand: the project keeps its crate list short, and the tools
/// only ever write JSON.
#[derive(Clone, Debug)]
pub enum Json {
    Null,
    Bool(bool),
    Num(u64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(&'static str, Json)>),
}

impl Json {
    pub fn str(s: impl Into<String>) -> Json {
        Json::Str(s.into())
    }

    /// Serialised on one line.
    pub fn render(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }

    fn write(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Num(n) => {
                let _ = write!(out, "{n}");
            }
            Json::Str(s) => write_str(out, s),
            Json::Arr(v) => {
                out.push('[');
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    x.write(out);
                }
                out.push(']');
            }
            Json::Obj(v) => {
                out.push('{');
                for (i, (k, x)) in v.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_str(out, k);
                    out.push(':');
                    x.write(out);
                }
                out.push('}');
            }
        }
    }
}

fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_line() {
        assert_eq!(show(b"a b"), "a b");
        assert_eq!(show(b"a\nb\t\xff\\"), "a\\nb\\t\\xff\\\\");
        assert_eq!(show_path(&[]), "/");
        assert_eq!(show_path(&[b"a".to_vec(), b"b".to_vec()]), "/a/b");
    }

    #[test]
    fn json() {
        let j = Json::Obj(vec![
            ("a", Json::str("x\"y\\\n\u{1}")),
            (
                "b",
                Json::Arr(vec![Json::Num(1), Json::Bool(false), Json::Null]),
            ),
        ]);
        assert_eq!(j.render(), r#"{"a":"x\"y\\\n\u0001","b":[1,false,null]}"#);
    }
}
