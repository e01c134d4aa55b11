//! Where a problem is: byte offsets to line and column, and key paths
//! rendered as TOML writes them.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The 1-based line and column (in characters) of byte `offset` in `text`.
pub(super) fn position(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    (line, before[line_start..].chars().count() + 1)
}

/// For serde's `deny_unknown_fields` message, the valid keys it lists
/// ("unknown field `x`, expected one of `a`, `b`"), comma-separated.
pub(super) fn unknown_field_expected(message: &str) -> Option<String> {
    let rest = message.strip_prefix(UNKNOWN_FIELD)?;
    let listed = match rest.rfind("`, expected ") {
        Some(at) => &rest[at + 2..],
        None => "",
    };
    let names: Vec<&str> = listed.split('`').skip(1).step_by(2).collect();
    Some(names.join(", "))
}

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Seg {
    Key(String),
    Index(usize),
}

/// A key path as TOML writes it: `users."sha256:…".quota`, `denylist[2]`.
pub(super) fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&quote(key));
            }
            Seg::Index(index) => out.push_str(&format!("[{index}]")),
        }
    }
    out
}

/// `key` bare if TOML allows it bare, else as a basic string.
pub(super) fn quote(key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        return key.to_owned();
    }
    let mut out = String::from('"');
    for c in key.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The segments of a key as written (`quota.max_running_jobs`,
/// `users."sha256:…"`), or `None` if `written` is not just a key.
pub(super) fn key_segments(written: &str) -> Option<Vec<Seg>> {
    let line = format!("{written} = 0");
    let tree = DeTable::parse(&line).ok()?;
    let mut table = tree.get_ref();
    let mut path = Vec::new();
    loop {
        let mut entries = table.iter();
        let (key, value) = entries.next()?;
        if entries.next().is_some() {
            return None;
        }
        path.push(Seg::Key(key.get_ref().to_string()));
        match value.get_ref() {
            DeValue::Table(inner) => table = inner,
            _ => return Some(path),
        }
    }
}

/// Every table defined by a `[header]` or `[[header]]` in `table`, with the
/// header's span and the table's path.
pub(super) fn collect_headers(
    table: &DeTable<'_>,
    text: &str,
    path: &mut Vec<Seg>,
    out: &mut Vec<(Range<usize>, Vec<Seg>)>,
) {
    // A header's table is spanned by the header itself; implicit, dotted
    // and inline tables start with a key or `{`, never `[`.
    let is_header =
        |span: &Range<usize>| text.get(span.clone()).is_some_and(|s| s.starts_with('['));
    for (key, value) in table {
        path.push(Seg::Key(key.get_ref().to_string()));
        match value.get_ref() {
            DeValue::Table(inner) => {
                if is_header(&value.span()) {
                    out.push((value.span(), path.clone()));
                }
                collect_headers(inner, text, path, out);
            }
            DeValue::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    if let DeValue::Table(inner) = item.get_ref() {
                        path.push(Seg::Index(index));
                        if is_header(&item.span()) {
                            out.push((item.span(), path.clone()));
                        }
                        collect_headers(inner, text, path, out);
                        path.pop();
                    }
                }
            }
            _ => {}
        }
        path.pop();
    }
}
