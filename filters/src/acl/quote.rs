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
                // Go prints letters, marks, numbers, punctuation and symbols; other spaces,
                // controls, format characters and private-use ones are escaped.
                c if c.is_control() || c.is_whitespace() || is_format_or_private(c) => {
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

/// Format characters (Unicode category Cf), private-use characters (Co) and noncharacters,
/// which Go's `unicode.IsPrint` rejects and `strconv.Quote` escapes. Unassigned code points,
/// which Go escapes too, would need Unicode's tables and are left as they are.
fn is_format_or_private(c: char) -> bool {
    const FORMAT: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let c = c as u32;
    let private = (0xE000..=0xF8FF).contains(&c) || c >= 0xF0000;
    let noncharacter = (0xFDD0..=0xFDEF).contains(&c) || c & 0xFFFE == 0xFFFE;
    private || noncharacter || FORMAT.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
}

/// Reads a Go-quoted string at the start of `text` (as [`go_quote`] writes it, and as
/// nats-server writes subjects in its errors): the bytes it stands for and the length of the
/// quoted form. `None` when `text` does not start with a well-formed one.
pub fn go_unquote(text: &str) -> Option<(Vec<u8>, usize)> {
    let body = text.strip_prefix('"')?;
    let mut out = Vec::with_capacity(body.len());
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, i + 2)),
            '\\' => {
                let (_, e) = chars.next()?;
                let hex = |chars: &mut std::str::CharIndices, n: usize| -> Option<u32> {
                    (0..n).try_fold(0u32, |acc, _| {
                        Some(acc * 16 + chars.next()?.1.to_digit(16)?)
                    })
                };
                match e {
                    '"' | '\\' | '\'' => out.push(e as u8),
                    'a' => out.push(0x07),
                    'b' => out.push(0x08),
                    'f' => out.push(0x0c),
                    'n' => out.push(b'\n'),
                    'r' => out.push(b'\r'),
                    't' => out.push(b'\t'),
                    'v' => out.push(0x0b),
                    'x' => out.push(u8::try_from(hex(&mut chars, 2)?).ok()?),
                    'u' | 'U' => {
                        let c = char::from_u32(hex(&mut chars, if e == 'u' { 4 } else { 8 })?)?;
                        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                    }
                    _ => return None,
                }
            }
            c => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{go_quote, go_unquote};

    /// What `go_quote` writes, `go_unquote` reads back, with the length it took.
    #[test]
    fn unquote_reads_back_what_quote_writes() {
        for bytes in [
            &b"foo.bar"[..],
            b"a\"b\\c",
            b"a\x01b\x7f\x07\t",
            b"\xff.x",
            "grüße.ü".as_bytes(),
            "a\u{a0}b\u{1F600}".as_bytes(),
        ] {
            let quoted = go_quote(bytes);
            let tail = format!("{quoted} using queue \"q\"");
            assert_eq!(
                go_unquote(&tail),
                Some((bytes.to_vec(), quoted.len())),
                "{quoted}"
            );
        }
        assert_eq!(
            go_unquote(r#""\u00e9""#),
            Some(("é".as_bytes().to_vec(), 8))
        );
        for bad in ["foo", r#""unterminated"#, r#""bad \q escape""#, r#""\x4""#] {
            assert_eq!(go_unquote(bad), None, "{bad}");
        }
    }

    #[test]
    fn as_go_prints_it() {
        assert_eq!(go_quote(b"foo.bar"), r#""foo.bar""#);
        assert_eq!(go_quote(b"a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(go_quote(b"a\x01b\x7f"), r#""a\x01b\x7f""#);
        assert_eq!(go_quote(b"\xff.x"), r#""\xff.x""#);
        assert_eq!(go_quote("grüße.ü".as_bytes()), "\"grüße.ü\"");
        assert_eq!(go_quote("a\u{a0}b".as_bytes()), r#""a\u00a0b""#);
        // As nats-server quotes them (checked against it): format, private-use and
        // noncharacter code points.
        assert_eq!(
            go_quote("a\u{ad}b\u{200b}c\u{e000}d\u{f0000}e\u{fffe}f\u{e0041}g".as_bytes()),
            r#""a\u00adb\u200bc\ue000d\U000f0000e\ufffef\U000e0041g""#
        );
    }
}
