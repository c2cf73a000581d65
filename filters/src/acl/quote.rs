//! Go's `%q` quoting, which nats-server uses for the subject in a permissions error: the
//! client must read the same bytes from the edge as from the server.

/// Quotes `bytes` as Go's `strconv.Quote` does.
pub fn go_quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\x07' => out.push_str("\\a"),
                '\x08' => out.push_str("\\b"),
                '\x0c' => out.push_str("\\f"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\x0b' => out.push_str("\\v"),
                c if (c as u32) < 0x20 || c == '\x7f' => {
                    out.push_str(&format!("\\x{:02x}", c as u32));
                }
                c if c == ' ' || c.is_ascii() => out.push(c),
                // Go prints letters, marks, numbers, punctuation and symbols; other spaces and
                // controls are escaped.
                c if c.is_control() || c.is_whitespace() => {
                    if (c as u32) <= 0xffff {
                        out.push_str(&format!("\\u{:04x}", c as u32));
                    } else {
                        out.push_str(&format!("\\U{:08x}", c as u32));
                    }
                }
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::go_quote;

    #[test]
    fn as_go_prints_it() {
        assert_eq!(go_quote(b"foo.bar"), r#""foo.bar""#);
        assert_eq!(go_quote(b"a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote(b"a\x01b\x7f"), r#""a\x01b\x7f""#);
        assert_eq!(go_quote(b"\xff.x"), r#""\xff.x""#);
        assert_eq!(go_quote("grüße.ü".as_bytes()), "\"grüße.ü\"");
        assert_eq!(go_quote("a\u{a0}b".as_bytes()), r#""a\u00a0b""#);
    }
}
